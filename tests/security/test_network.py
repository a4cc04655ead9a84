"""Security specification: repository URLs cannot reach the hub's own network.

Any user names a repository and the hub's host fetches it. So:

- A repository whose host is, or resolves to, a loopback, private, link-local,
  unspecified or multicast address, or one of this host's own addresses
  (the Docker bridge included), is never contacted: not by ``git ls-remote``,
  not by the Dockerfile check, not by repo2docker's clone. This holds for the
  REST API, the form, launch links and the command line, and for admins too
  until an admin allows a network (``allowed_networks``) or a host
  (``allowed_hosts``) on purpose.
- The address is checked after name resolution, and git is pinned to the
  checked address (a second DNS answer cannot swap it); redirects are not
  followed.
- A refused fetch reads exactly like a failed one (a closed port, a missing
  repository): the person learns nothing about what answered. The reason is
  in the service's log, for the admin.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from urllib.parse import quote

import aiodocker
import pytest

from tljh_repo2docker import gitref, labels, netguard
from tljh_repo2docker.builder import BuildRequest, BuildSettings
from tljh_repo2docker.buildjob import BuildFailed, run_build
from tljh_repo2docker.netguard import NetGuard

from ..conftest import run_cli
from ..dockerfixtures import SINGLEUSER_IMAGE, docker, remove_hub_objects
from ..hubprocess import OFFLINE_R2D_CONFIG, free_port
from .client import Service
from .gitserver import GitServer, make_repo

pytestmark = pytest.mark.docker

REFUSED = f"Cannot resolve 'HEAD': {netguard.FETCH_FAILED}"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    commit = make_repo(root, "inside", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"})
    return root, commit


@pytest.fixture(scope="module")
def server(repos):
    """A real git server on loopback: a service the hub's host can reach."""
    with GitServer(repos[0]) as s:
        yield s


@pytest.fixture(scope="module")
def service(hub):
    return Service(hub)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/inside.git"


def test_a_loopback_server_is_refused_exactly_like_a_closed_port(service, server):
    closed = closed_port_url()
    open_build = service.build("mallory", name="probe-open", repo=server.url("inside"))
    closed_build = service.build("mallory", name="probe-closed", repo=closed)
    assert open_build["status"] == closed_build["status"] == "failed"
    assert open_build["error"] == closed_build["error"] == REFUSED
    # the same log too, apart from the URL it names
    open_log = service.log("mallory", "probe-open", open_build["id"])
    closed_log = service.log("mallory", "probe-closed", closed_build["id"])
    assert open_log.replace(server.url("inside"), "URL") == closed_log.replace(closed, "URL")
    for text in (open_log, open_build["error"]):
        # the URL is the person's own (its random port may well contain "404")
        text = text.replace(server.url("inside"), "URL")
        for tell in ("refused", "404", "200 ", "onnect", "port", "HTTP", "loopback"):
            assert tell not in text, text
    assert server.requests == []  # nothing reached it


@pytest.mark.parametrize(
    "host",
    ["localhost", "[::1]", "0.0.0.0", "2130706433", "0x7f000001", "0177.0.0.1", "127.1"],
)
def test_every_spelling_of_this_machine_is_refused_even_for_admins(service, server, host):
    name = "probe-" + str(abs(hash(host)) % 10**8)
    build = service.build("admin", name=name, repo=server.url("inside", host=host))
    assert (build["status"], build["error"]) == ("failed", REFUSED)
    assert server.requests == []


def bridge_address() -> str | None:
    from tljh_repo2docker.hubconfig import bridge_ip

    return bridge_ip()


def test_the_docker_bridge_address_is_refused(service, repos):
    address = bridge_address()
    assert address, "the Docker bridge (docker0) is missing"
    with GitServer(repos[0], host=address) as bridge_server:
        build = service.build("mallory", name="probe-bridge", repo=bridge_server.url("inside"))
        assert (build["status"], build["error"]) == ("failed", REFUSED)
        assert bridge_server.requests == []


def test_a_launch_link_to_loopback_is_refused_with_the_same_words(service, server):
    spec = "git/" + quote(server.url("inside"), safe="") + "/HEAD"
    events = service.launch_events("mallory", spec)
    assert events[-1]["phase"] == "failed"
    assert netguard.FETCH_FAILED in events[-1]["message"]
    closed = service.launch_events("mallory", "git/" + quote(closed_port_url(), safe="") + "/HEAD")
    assert closed[-1]["message"] == events[-1]["message"]
    assert server.requests == []


def test_the_command_line_refuses_loopback_too(hub, server):
    result = run_cli(hub, "build", server.url("inside"), "--name", "probe-cli", check=False)
    assert result.returncode == 1
    assert netguard.FETCH_FAILED in result.stderr
    assert server.requests == []


def test_the_admin_log_says_why(hub, server):
    log = hub.log_path.read_text(errors="replace")
    assert f"refused to fetch {server.url('inside')}: 127.0.0.1 is loopback" in log


# --- without a hub: the guard's pins and redirects, with real git and repo2docker ---------
def serve_on(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def test_redirects_are_not_followed_even_between_allowed_addresses(repos):
    assert serve_on("127.0.0.2")
    with GitServer(repos[0]) as target:
        with GitServer(
            repos[0], host="127.0.0.2", redirect_to=f"http://127.0.0.1:{target.port}"
        ) as hop:
            guard = NetGuard(allowed_networks=["127.0.0.2/32"])
            with pytest.raises(gitref.RefNotFound) as info:
                asyncio.run(gitref.resolve_ref(hop.url("inside"), "HEAD", guard=guard))
            assert str(info.value) == netguard.FETCH_FAILED
            assert hop.requests and target.requests == []
            # even with both networks allowed, git stays where it was sent
            guard = NetGuard(allowed_networks=["127.0.0.0/8"])
            with pytest.raises(gitref.RefNotFound):
                asyncio.run(gitref.resolve_ref(hop.url("inside"), "HEAD", guard=guard))
            assert target.requests == []


def test_an_allowed_network_works(repos, server):
    commit = asyncio.run(
        gitref.resolve_ref(
            server.url("inside"), "HEAD", guard=NetGuard(allowed_networks=["127.0.0.0/8"])
        )
    )
    assert commit == repos[1]
    assert server.requests
    server.requests.clear()


def test_what_answered_is_never_told(server):
    """Where git does connect (an allowed network), its failures read the same
    as a refusal: a closed port, a missing repository (HTTP 404), a server
    that is not git at all."""
    guard = NetGuard(allowed_networks=["127.0.0.0/8"])
    hub_port = free_port()
    messages = set()
    for url in (
        closed_port_url(),
        server.url("no-such-repository"),
        f"http://127.0.0.1:{hub_port}/x.git",
    ):
        with pytest.raises(gitref.RefNotFound) as info:
            asyncio.run(gitref.resolve_ref(url, "HEAD", timeout=10, guard=guard))
        messages.add(str(info.value))
        assert info.value.detail  # what git said: for the log
    with pytest.raises(gitref.RefNotFound) as refused:
        asyncio.run(gitref.resolve_ref(server.url("inside"), "HEAD", guard=NetGuard()))
    messages.add(str(refused.value))
    assert messages == {netguard.FETCH_FAILED}
    server.requests.clear()


def pinned_guard(address: str, networks: list[str]):
    """A guard whose resolver answers ``address`` for every name: what a DNS
    server could answer once, before answering something else to git."""

    async def resolver(host, port):
        return [address]

    return NetGuard(allowed_networks=networks, resolver=resolver)


def test_git_and_repo2docker_connect_to_the_checked_address_only(repos, monkeypatch, tmp_path):
    """The name 'localhost' resolves to 127.0.0.1 for git, where nothing
    serves this port; the guard checked 127.0.0.2, where the server is. The
    build succeeds only if ls-remote, the Dockerfile check and repo2docker's
    own clone all connect to the checked address."""
    assert serve_on("127.0.0.2")
    hub_name = f"test-sec-{free_port()}"
    settings = BuildSettings(
        hub_name=hub_name,
        image_prefix="tljh-r2d-sec/",
        repo2docker_config=[OFFLINE_R2D_CONFIG],
        allowed_base_images=[SINGLEUSER_IMAGE],
    )
    monkeypatch.setattr(
        BuildSettings, "net_guard", lambda self: pinned_guard("127.0.0.2", ["127.0.0.2/32"])
    )
    lines = []
    with GitServer(repos[0], host="127.0.0.2") as server:
        url = server.url("inside", host="localhost")
        # without the pin git would go to 127.0.0.1: nothing there
        plain = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True)
        assert plain.returncode != 0
        request = BuildRequest(
            name="pinned", repo=url, ref="HEAD", display_name="pinned", built_by="bob"
        )

        async def build():
            async with aiodocker.Docker() as client:
                return await run_build(settings, request, lines.append, docker=client)

        try:
            result = asyncio.run(build())
            assert result.commit == repos[1]
            got = docker("inspect", "--format", "{{json .Config.Labels}}", result.image)
            assert f'"{labels.HUB}":"{hub_name}"' in got
        finally:
            remove_hub_objects(hub_name)
        assert any("clone" in r or "upload-pack" in r for r in server.requests)


def test_a_user_cannot_build_a_local_repository_even_when_enabled(repos):
    settings = BuildSettings(allow_local_repos=True)
    request = BuildRequest(
        name="local", repo=f"file://{repos[0]}/inside.git", ref="HEAD", display_name="l"
    )
    with pytest.raises(BuildFailed, match="administrators"):
        asyncio.run(run_build(settings, request, lambda line: None, docker=None))


def test_the_git_protocol_is_pinned_too(repos):
    """git:// has no curl: the pin is a url.<address>.insteadOf rewrite."""
    assert serve_on("127.0.0.2")
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--listen=127.0.0.2",
            f"--port={port}",
            "--export-all",
            f"--base-path={repos[0]}",
            "--reuseaddr",
            str(repos[0]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"git://localhost:{port}/inside.git"
        guard = pinned_guard("127.0.0.2", ["127.0.0.2/32"])
        deadline = time.monotonic() + 10
        while True:
            try:
                commit = asyncio.run(gitref.resolve_ref(url, "HEAD", timeout=5, guard=guard))
                break
            except gitref.RefNotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert commit == repos[1]
        # unpinned, 'localhost' is 127.0.0.1, where no daemon listens
        plain = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True)
        assert plain.returncode != 0
    finally:
        daemon.terminate()
        daemon.wait(10)
