"""Which addresses a repository URL may reach: pure decisions + a thin resolver.

A user names a repository; the hub's host fetches it. Without a check, the
host would fetch from its own loopback services (the proxy's API, the hub's
API on the Docker bridge), its private network or a cloud metadata address
for whoever asks. So every network repository is checked *after* name
resolution, and git is pinned to the address that was checked (a second DNS
answer cannot swap it), with redirects turned off (a public server cannot send
git on to a private one).

Admins open this up on purpose with ``allowed_networks`` (CIDRs) and
``allowed_hosts`` (names). ``file://`` repositories are not network fetches;
``allow_local_repos`` governs them.

The person is told only that the fetch failed (``FETCH_FAILED``), never what
answered: the reason goes to the admin's log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# One message for every failure, whatever answered (or did not).
FETCH_FAILED = (
    "could not fetch the repository: it does not exist, is private, "
    "or cannot be reached from this hub"
)

DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
_SCP_RE = re.compile(r"^(?P<user>[^@/]+)@(?P<host>[^:/]+):(?P<path>.*)$")
# Interfaces whose whole network is this host's: containers on Docker bridges.
_BRIDGE_RE = re.compile(r"^(docker[0-9]*|br-[0-9a-f]+)$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """A repository address we do not fetch from; ``reason`` is for the log only."""

    def __init__(self, reason: str):
        super().__init__(FETCH_FAILED)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    netloc: str = ""  # as written in the URL (git's insteadOf matches text)


def target(repo: str) -> Target | None:
    """Where fetching ``repo`` connects, or None when it is not a network fetch."""
    match = _SCP_RE.match(repo)
    if match and "://" not in repo:
        return Target("ssh", match["host"].lower(), 22)
    parts = urlsplit(repo)
    scheme = parts.scheme.lower()
    if scheme == "file" or not scheme:
        return None
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"unknown scheme {scheme!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise Refused("invalid port") from None
    if not parts.hostname:
        raise Refused("no host")
    return Target(scheme, parts.hostname.lower(), port, parts.netloc)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, compatible)."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip in ipaddress.ip_network("64:ff9b::/96") or ip in ipaddress.ip_network("::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why a repository may not be fetched from ``ip`` by default, or None."""
    for attribute in ("unspecified", "loopback", "link_local", "multicast", "reserved"):
        if getattr(ip, f"is_{attribute}"):
            return attribute.replace("_", "-")
    inner = _embedded_ipv4(ip)
    if inner is not None:
        reason = forbidden_reason(inner)
        if reason:
            return f"{reason} (inside {ip})"
    if ip.is_private:
        return "private"
    # is_global is False for the rest of the special ranges (shared address
    # space 100.64/10, documentation, benchmarking, ...).
    if not ip.is_global:
        return "not global"
    return None


@dataclass(frozen=True)
class LocalAddresses:
    """This host's own addresses, and the networks of its Docker bridges."""

    addresses: frozenset = frozenset()
    networks: tuple = ()

    def reason(self, ip: IPAddress) -> str | None:
        if ip in self.addresses:
            return "an address of this host"
        for network in self.networks:
            if ip.version == network.version and ip in network:
                return f"a Docker bridge network of this host ({network})"
        return None


def parse_ip_addr_json(text: str) -> LocalAddresses:
    """``ip -j addr`` output -> LocalAddresses (pure)."""
    addresses, networks = set(), []
    try:
        interfaces = json.loads(text or "[]")
    except ValueError:
        return LocalAddresses()
    for interface in interfaces if isinstance(interfaces, list) else []:
        name = str(interface.get("ifname", ""))
        for info in interface.get("addr_info") or []:
            try:
                iface = ipaddress.ip_interface(f"{info['local']}/{info.get('prefixlen', 128)}")
            except (KeyError, ValueError):
                continue
            addresses.add(iface.ip)
            if _BRIDGE_RE.match(name):
                networks.append(iface.network)
    return LocalAddresses(frozenset(addresses), tuple(networks))


_local_cache: tuple[float, LocalAddresses] | None = None


def local_addresses(max_age: float = 30) -> LocalAddresses:
    """This host's addresses (cached a little: interfaces rarely change)."""
    global _local_cache
    now = time.monotonic()
    if _local_cache is not None and now - _local_cache[0] < max_age:
        return _local_cache[1]
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = parse_ip_addr_json(out)
    if not found.addresses:
        # without iproute2: at least the addresses the host name has
        try:
            names = socket.getaddrinfo(socket.gethostname(), None)
            found = LocalAddresses(frozenset(ipaddress.ip_address(n[4][0]) for n in names))
        except OSError:
            found = LocalAddresses()
    _local_cache = (now, found)
    return found


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    """``host`` is listed, or under a listed ``.example.org`` suffix."""
    host = host.lower().rstrip(".")
    for allowed in allowed_hosts:
        allowed = allowed.lower().rstrip(".")
        if allowed.startswith("."):
            if host.endswith(allowed):
                return True
        elif host == allowed:
            return True
    return False


def decide(
    addresses: Iterable[str],
    *,
    local: LocalAddresses,
    allowed_networks: Iterable[IPNetwork] = (),
) -> list[IPAddress]:
    """The addresses to use; Refused if any answer is one we must not reach.

    Every answer is checked: whoever controls the name's DNS chooses them all.
    """
    allowed_networks = list(allowed_networks)
    out = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise Refused(f"unreadable address {text!r}") from None
        if not any(ip.version == n.version and ip in n for n in allowed_networks):
            inner = _embedded_ipv4(ip)
            reason = (
                forbidden_reason(ip)
                or local.reason(ip)
                or (inner is not None and local.reason(inner))
            )
            if reason:
                raise Refused(f"{ip} is {reason}")
        if ip not in out:
            out.append(ip)
    if not out:
        raise Refused("the name has no address")
    return out


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives (as git and curl would ask it)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"name does not resolve: {e}") from None
    return [info[4][0] for info in infos]


def pin_config(t: Target, ip: IPAddress) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """git config pairs and environment that make git connect to ``ip`` only."""
    pairs = [("http.followRedirects", "false")]
    env: dict[str, str] = {}
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    if t.scheme in ("http", "https"):
        # libcurl's resolve cache: the name maps to the checked address only
        pairs.append(("http.curloptResolve", f"{t.host}:{t.port}:{literal}"))
    elif t.scheme == "git":
        # the URL's own spelling of its host, user and port is the prefix
        host = f"[{t.host}]" if ":" in t.host else t.host
        prefixes = {f"git://{t.netloc}/", f"git://{host}:{t.port}/", f"git://{host}/"}
        for prefix in sorted(p for p in prefixes if p != "git:///"):
            pairs.append((f"url.git://{literal}:{t.port}/.insteadOf", prefix))
    elif t.scheme == "ssh":
        # ssh connects to the address; host keys are still looked up by name
        env["GIT_SSH_COMMAND"] = (
            f"ssh -o BatchMode=yes -o HostName={ip} -o HostKeyAlias={t.host} -o ProxyCommand=none"
        )
        env["GIT_SSH_VARIANT"] = "ssh"
    return pairs, env


def add_git_config(env: dict[str, str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``env`` plus git config pairs, after any already there (GIT_CONFIG_COUNT)."""
    env = dict(env)
    count = int(env.get("GIT_CONFIG_COUNT") or 0)
    for key, value in pairs:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env


# Submodules are fetched by git from URLs inside the repository, which this
# check never saw; "user" lets only the top-level fetch use each protocol
# (git itself marks submodule fetches as not from the user).
NO_SUBMODULE_FETCHES = [
    (f"protocol.{name}.allow", "user") for name in ("http", "https", "git", "ssh", "file")
]


@dataclass
class NetGuard:
    allowed_networks: list = field(default_factory=list)
    allowed_hosts: list = field(default_factory=list)
    fetch_submodules: bool = False
    resolver: Callable[[str, int], Awaitable[list[str]]] = system_resolve
    local: Callable[[], LocalAddresses] = local_addresses

    async def check(self, repo: str) -> tuple[Target, IPAddress] | None:
        """(target, the address to use), None for a local repository; Refused if not allowed."""
        t = target(repo)
        if t is None:
            return None
        if t.host.startswith("-"):
            raise Refused("host starts with '-'")
        answers = await self.resolver(t.host, t.port)
        if host_allowed(t.host, self.allowed_hosts):
            # an admin trusts this name wherever it points
            return t, ipaddress.ip_address(answers[0].split("%", 1)[0])
        addresses = decide(
            answers, local=self.local(), allowed_networks=parse_networks(self.allowed_networks)
        )
        return t, addresses[0]

    async def git_env(self, repo: str, env: dict[str, str]) -> dict[str, str]:
        """``env`` for git (and repo2docker's git) fetching ``repo`` safely."""
        checked = await self.check(repo)
        pairs = [] if self.fetch_submodules else list(NO_SUBMODULE_FETCHES)
        if checked is None:
            return add_git_config(env, pairs)
        more_pairs, more_env = pin_config(*checked)
        env = add_git_config(env, pairs + more_pairs)
        env.update(more_env)
        return env
