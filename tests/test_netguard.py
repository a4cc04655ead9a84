"""Which addresses a repository URL may reach (netguard): the pure decisions,
a fake resolver for DNS answers, and the system resolver for the spellings of
this machine's own addresses (no packet leaves the machine)."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from tljh_repo2docker import gitref, netguard
from tljh_repo2docker.builder import BuildSettings
from tljh_repo2docker.netguard import LocalAddresses, NetGuard, Refused

PUBLIC = "93.184.216.34"
HOST_PUBLIC = "34.1.2.3"  # stands for the hub host's own public address (never contacted)
NO_LOCAL = LocalAddresses()


def guard(answers, local=NO_LOCAL, **kwargs) -> NetGuard:
    async def resolver(host, port):
        value = answers[host] if isinstance(answers, dict) else answers
        if isinstance(value, Exception):
            raise value
        return list(value)

    return NetGuard(resolver=resolver, local=lambda: local, **kwargs)


def check(g: NetGuard, repo: str):
    return asyncio.run(g.check(repo))


# --- targets -------------------------------------------------------------------
@pytest.mark.parametrize(
    "repo, expected",
    [
        ("https://github.com/a/b", ("https", "github.com", 443)),
        ("http://Example.ORG:8080/a", ("http", "example.org", 8080)),
        ("git://example.org/a", ("git", "example.org", 9418)),
        ("ssh://git@example.org:2222/a", ("ssh", "example.org", 2222)),
        ("git@example.org:a/b.git", ("ssh", "example.org", 22)),
        ("https://[::1]:8443/x", ("https", "::1", 8443)),
    ],
)
def test_target(repo, expected):
    t = netguard.target(repo)
    assert (t.scheme, t.host, t.port) == expected


def test_file_urls_are_not_network_fetches():
    assert netguard.target("file:///srv/repo") is None
    assert check(guard(Refused("must not be asked")), "file:///srv/repo") is None


# --- the address decision ----------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.5.6.7",
        "0.0.0.0",
        "10.0.0.1",
        "172.16.5.4",
        "172.17.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::2",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_refused_addresses(address):
    with pytest.raises(Refused):
        netguard.decide([address], local=NO_LOCAL)
    assert netguard.forbidden_reason(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_pass(address):
    assert netguard.decide([address], local=NO_LOCAL) == [ipaddress.ip_address(address)]


def test_the_hosts_own_public_address_is_refused():
    local = LocalAddresses(frozenset({ipaddress.ip_address(HOST_PUBLIC)}))
    assert netguard.decide([HOST_PUBLIC], local=NO_LOCAL)  # public for anyone else
    with pytest.raises(Refused) as info:
        netguard.decide([HOST_PUBLIC], local=local)
    assert "this host" in info.value.reason
    with pytest.raises(Refused):  # IPv4-mapped IPv6 forms are refused outright
        netguard.decide([f"::ffff:{HOST_PUBLIC}"], local=NO_LOCAL)


def test_a_public_docker_bridge_network_is_refused():
    bridge = LocalAddresses(networks=(ipaddress.ip_network("52.0.0.0/24"),))
    assert netguard.decide(["52.0.0.7"], local=NO_LOCAL)
    with pytest.raises(Refused) as info:
        netguard.decide(["52.0.0.7"], local=bridge)
    assert "bridge" in info.value.reason


def test_one_private_answer_among_public_ones_refuses_the_name():
    # whoever controls the DNS picks every answer; git may use any of them
    with pytest.raises(Refused):
        check(guard([PUBLIC, "127.0.0.1"]), "https://rebind.example/x")


def test_name_that_does_not_resolve_is_refused_with_the_same_words():
    with pytest.raises(Refused) as info:
        check(guard(Refused("no such name")), "https://nowhere.example/x")
    assert str(info.value) == netguard.FETCH_FAILED
    with pytest.raises(Refused) as loop:
        check(guard(["127.0.0.1"]), "https://loop.example/x")
    assert str(loop.value) == str(info.value)


def test_dns_answer_pointing_home_is_refused():
    # a public-looking name whose A record is loopback, private or metadata
    for answer in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"):
        with pytest.raises(Refused):
            check(guard([answer]), "https://innocent.example/repo")


def test_allowed_networks_open_only_those_networks():
    g = guard(
        {"git.lan": ["10.1.2.3"], "other.lan": ["10.9.9.9"]}, allowed_networks=["10.1.0.0/16"]
    )
    t, ip = check(g, "https://git.lan/r")
    assert str(ip) == "10.1.2.3"
    with pytest.raises(Refused):
        check(g, "https://other.lan/r")


def test_allowed_networks_open_loopback_on_purpose():
    g = guard(["127.0.0.1"], allowed_networks=["127.0.0.0/8"])
    assert str(check(g, "http://localhost:8000/r")[1]) == "127.0.0.1"


def test_allowed_hosts_trust_a_name_and_its_suffix():
    g = guard(["10.0.0.5"], allowed_hosts=["git.corp", ".lab.corp"])
    assert check(g, "https://git.corp/r")
    assert check(g, "https://a.lab.corp/r")
    for repo in ("https://evil-git.corp/r", "https://lab.corp.evil/r", "https://xgit.corp/r"):
        with pytest.raises(Refused):
            check(g, repo)


def test_parse_ip_addr_json():
    text = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [{"local": HOST_PUBLIC, "prefixlen": 24}]},
            {"ifname": "docker0", "addr_info": [{"local": "198.51.100.1", "prefixlen": 24}]},
            {"ifname": "br-0123abcd", "addr_info": [{"local": "fd01::1", "prefixlen": 64}]},
            {"ifname": "broken", "addr_info": [{"nolocal": 1}]},
        ]
    )
    found = netguard.parse_ip_addr_json(text)
    assert ipaddress.ip_address(HOST_PUBLIC) in found.addresses
    assert ipaddress.ip_network("198.51.100.0/24") in found.networks
    assert ipaddress.ip_network("fd01::/64") in found.networks
    # the LAN of eth0 is not this host's: only its address is
    assert ipaddress.ip_network("34.1.2.0/24") not in found.networks
    assert netguard.parse_ip_addr_json("not json") == LocalAddresses()


def test_local_addresses_of_this_machine_include_loopback_and_bridge():
    found = netguard.local_addresses(max_age=0)
    assert ipaddress.ip_address("127.0.0.1") in found.addresses


# --- pinning git to the checked address ----------------------------------------------
def test_pin_http_uses_curl_resolve_and_no_redirects():
    env = asyncio.run(guard([PUBLIC]).git_env("https://example.org/r", {"A": "1"}))
    pairs = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert pairs["http.curloptResolve"] == f"example.org:443:{PUBLIC}"
    assert pairs["http.followRedirects"] == "false"
    # submodules (URLs this check never saw) are not fetched
    assert pairs["protocol.https.allow"] == "user"
    assert env["A"] == "1"


def test_pin_keeps_config_already_there():
    env = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": "X: y",
    }
    env = asyncio.run(guard([PUBLIC]).git_env("https://example.org/r", env))
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert int(env["GIT_CONFIG_COUNT"]) > 2


def test_pin_ipv6_literal_in_brackets():
    pairs, _ = netguard.pin_config(
        netguard.Target("https", "example.org", 443), ipaddress.ip_address("2001:db8::1")
    )
    assert ("http.curloptResolve", "example.org:443:[2001:db8::1]") in pairs


def test_pin_git_and_ssh():
    pairs, _ = netguard.pin_config(
        netguard.Target("git", "example.org", 9418), ipaddress.ip_address(PUBLIC)
    )
    assert (f"url.git://{PUBLIC}:9418/.insteadOf", "git://example.org/") in pairs
    _, env = netguard.pin_config(
        netguard.Target("ssh", "example.org", 22), ipaddress.ip_address(PUBLIC)
    )
    assert f"HostName={PUBLIC}" in env["GIT_SSH_COMMAND"]
    assert "HostKeyAlias=example.org" in env["GIT_SSH_COMMAND"]


def test_fetch_submodules_setting():
    env = asyncio.run(guard([PUBLIC], fetch_submodules=True).git_env("https://e.org/r", {}))
    values = [env[f"GIT_CONFIG_KEY_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    assert not any(v.startswith("protocol.") for v in values)


def test_settings_make_the_guard():
    s = BuildSettings(allowed_networks=["10.0.0.0/8"], allowed_hosts=["git.lan"])
    g = s.net_guard()
    assert (g.allowed_networks, g.allowed_hosts, g.fetch_submodules) == (
        ["10.0.0.0/8"],
        ["git.lan"],
        False,
    )
    assert BuildSettings().net_guard().allowed_networks == []
    with pytest.raises(Exception, match="CIDR"):
        BuildSettings(allowed_networks=["not-a-network"])


# --- the system resolver, for real: spellings of this machine -------------------------
@pytest.mark.parametrize(
    "repo",
    [
        "http://localhost:1/r",
        "http://127.0.0.1:1/r",
        "http://[::1]:1/r",
        "http://0.0.0.0:1/r",
        "http://2130706433:1/r",
        "http://0x7f000001:1/r",
        "http://0177.0.0.1:1/r",
        "http://127.1:1/r",
        "http://[::ffff:127.0.0.1]:1/r",
        "git://localhost/r",
        "ssh://localhost/r",
        "git@localhost:r",
    ],
)
def test_real_resolver_refuses_this_machine(repo):
    with pytest.raises(gitref.RefNotFound) as info:
        asyncio.run(gitref.resolve_ref(repo, "HEAD", timeout=5, guard=NetGuard()))
    assert str(info.value) == netguard.FETCH_FAILED


def test_pin_git_matches_the_url_as_written():
    t = netguard.target("git://Example.ORG:9418/r")
    pairs, _ = netguard.pin_config(t, ipaddress.ip_address(PUBLIC))
    assert (f"url.git://{PUBLIC}:9418/.insteadOf", "git://Example.ORG:9418/") in pairs
