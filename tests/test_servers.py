"""Where the service looks for servers (service/servers.py): the local
engine's containers on one host, the swarm's services with a swarm. The
real swarm is in tests/swarm/test_swarm_hub.py; here, how a service list
is read (labels, digests) without one."""

from __future__ import annotations

import asyncio

from tljh_repo2docker import labels
from tljh_repo2docker.service import servers


def service(hub, user, env, image, server_name="", service_id="s1"):
    return {
        "ID": service_id,
        "Spec": {
            "Labels": {
                labels.SERVER: "true",
                labels.HUB: hub,
                labels.USER: user,
                labels.SERVER_NAME: server_name,
                labels.ENVIRONMENT: env,
            },
            "TaskTemplate": {"ContainerSpec": {"Image": image}},
        },
    }


class FakeServices:
    def __init__(self, listed):
        self.listed = listed
        self.filters = []

    async def list(self, filters=None):
        self.filters.append(filters)
        return self.listed


class FakeManager:
    def __init__(self, listed):
        self.services = FakeServices(listed)


def swarm_servers(listed, local_images=()):
    found = servers.SwarmServers(docker=None, hub_name="h1", manager_url="unix:///nowhere")
    found._manager = FakeManager(listed)

    async def local():
        return set(local_images)

    found._local.images_in_use = local
    return found


def test_a_pinned_image_counts_as_its_tag():
    assert servers.image_name("127.0.0.1:5000/h1/demo:abc@sha256:" + "0" * 64) == (
        "127.0.0.1:5000/h1/demo:abc"
    )
    assert servers.image_name("r/demo:abc") == "r/demo:abc"


def test_servers_on_the_swarm_by_environment():
    found = swarm_servers(
        [
            service("h1", "ann", "demo", "r/demo:1", service_id="a"),
            service("h1", "bob", "demo", "r/demo:1", server_name="x", service_id="b"),
            service("h1", "cy", "other", "r/other:1", service_id="c"),
            service("h2", "eve", "demo", "r/demo:1", service_id="d"),  # another hub's
        ]
    )
    usage = asyncio.run(found.by_environment())
    assert sorted((s["user"], s["server_name"], s["id"]) for s in usage["demo"]) == [
        ("ann", "", "a"),
        ("bob", "x", "b"),
    ]
    assert [s["user"] for s in usage["other"]] == ["cy"]
    assert "eve" not in str(usage)
    # the engine is asked for this hub's servers only
    (asked,) = found._manager.services.filters
    assert asked == {"label": [f"{labels.HUB}=h1", f"{labels.SERVER}=true"]}


def test_images_in_use_on_the_swarm_and_on_this_host():
    pinned = "reg:5000/h1/demo:1@sha256:" + "1" * 64
    found = swarm_servers([service("h1", "ann", "demo", pinned)], local_images={"sha256:build"})
    used = asyncio.run(found.images_in_use())
    assert {"reg:5000/h1/demo:1", pinned, "sha256:build"} <= used
    assert "reg:5000/h1/other:1" not in used


def test_one_host_keeps_the_local_engine():
    assert isinstance(servers.servers_for(None, "h1", ""), servers.LocalServers)
    assert isinstance(servers.servers_for(None, "h1", "unix:///m.sock"), servers.SwarmServers)
