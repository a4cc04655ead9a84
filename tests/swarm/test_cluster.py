"""The swarm test harness is real (issue 12): a manager and two workers, a
registry the host pushes to and the workers pull from, services on workers
reached from the host at their node's address, homes shared between
workers, and no way out of this machine.

The tests share one cluster and run in file order (the image pushed first
is used by the later ones)."""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .cluster import Cluster, run

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

# The single-user image of the venv's JupyterHub major (scripts/setup-host).
SINGLEUSER_IMAGE = os.environ.get(
    "TLJH_R2D_SINGLEUSER_IMAGE", "tljh-repo2docker-dev/singleuser:latest"
)
TEST_LABEL = "tljh-repo2docker-dev.swarm-test"


@pytest.fixture(scope="module")
def image(cluster: Cluster):
    """A label-only image FROM the single-user image, pushed to the registry:
    (reference in the registry, repository, tag, label value)."""
    value = f"labelled-{cluster.run_id}"
    local = cluster.image_with_labels(SINGLEUSER_IMAGE, {TEST_LABEL: value})
    repository, tag = "swarm-test/singleuser", cluster.run_id
    ref = cluster.push(local, f"{repository}:{tag}")
    return ref, repository, tag, value


def test_one_manager_and_two_workers_ready(cluster: Cluster):
    rows = cluster.docker(cluster.manager, "node", "ls", "--format", "{{json .}}").stdout
    listed = {row["Hostname"]: row for row in map(json.loads, rows.splitlines())}
    assert sorted(listed) == ["manager", "worker1", "worker2"]
    assert all(row["Status"] == "Ready" for row in listed.values()), listed
    assert all(row["Availability"] == "Active" for row in listed.values()), listed
    assert listed["manager"]["ManagerStatus"] == "Leader"
    assert listed["worker1"]["ManagerStatus"] == listed["worker2"]["ManagerStatus"] == ""
    # three engines, each in the swarm in its role, labelled for placement
    for node in cluster.nodes:
        info = json.loads(cluster.docker(node, "info", "--format", "{{json .Swarm}}").stdout)
        assert info["LocalNodeState"] == "active"
        assert info["NodeID"] == node.swarm_id
        assert info["ControlAvailable"] is (node.role == "manager")
        spec = json.loads(
            cluster.docker(
                cluster.manager, "node", "inspect", "-f", "{{json .Spec}}", node.swarm_id
            ).stdout
        )
        assert spec["Labels"] == {"role": node.role}
    assert len({node.swarm_id for node in cluster.nodes}) == 3


def test_pushed_image_is_in_the_registry(cluster: Cluster, image):
    ref, repository, tag, value = image
    assert ref == f"127.0.0.1:{cluster.registry_port}/{repository}:{tag}"
    assert repository in cluster.registry_json("/v2/_catalog")["repositories"]
    assert cluster.registry_json(f"/v2/{repository}/tags/list")["tags"] == [tag]
    config = cluster.image_config(repository, tag)
    assert config["config"]["Labels"][TEST_LABEL] == value
    # an unknown tag is a 404, not an empty answer
    assert cluster.registry_get(f"/v2/{repository}/manifests/no-such-tag")[0] == 404


def test_workers_pull_from_the_registry(cluster: Cluster, image):
    ref = image[0]
    for node in cluster.nodes:  # fresh engines: nothing there before
        assert cluster.docker(node, "image", "inspect", ref, check=False).returncode != 0
    cluster.prepull(ref)
    for node in cluster.workers:
        labels = cluster.docker(
            node, "image", "inspect", "-f", "{{json .Config.Labels}}", ref
        ).stdout
        assert json.loads(labels)[TEST_LABEL] == image[3]
    # the manager runs no servers: nothing pulled there
    assert cluster.docker(cluster.manager, "image", "inspect", ref, check=False).returncode != 0


@pytest.fixture(scope="module")
def web(cluster: Cluster, image):
    """A service on a worker serving a token over HTTP on port 8888."""
    token = f"token-{cluster.run_id}"
    script = (
        'mkdir -p /tmp/www && echo "$TOKEN" >/tmp/www/token && cd /tmp/www'
        " && exec python3 -m http.server 8888"
    )
    cluster.service_create(
        "web",
        image[0],
        ["sh", "-c", script],
        ports=[8888],
        env={"TOKEN": token},
        labels={"tljh-repo2docker-dev.swarm-test.user": "alice"},
    )
    task = cluster.wait_task("web", "running")
    return task, token


def test_service_task_on_a_worker_reached_from_the_host(cluster: Cluster, web):
    task, token = web
    node = cluster.task_node(task)
    assert node.role == "worker"
    spec = json.loads(
        cluster.docker(cluster.manager, "service", "inspect", "-f", "{{json .Spec}}", "web").stdout
    )
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    # the address a hub on the host uses: the node on the cluster network
    address, port = cluster.task_address(task, 8888)
    assert address == node.ip
    subnet = json.loads(
        run(["docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", cluster.network]).stdout
    )[0]["Subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)

    def fetch():
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/token", timeout=3) as response:
                return response.read().decode().strip()
        except OSError:
            return ""

    deadline = time.monotonic() + 30
    body = fetch()
    while body != token and time.monotonic() < deadline:
        time.sleep(0.2)
        body = fetch()
    assert body == token
    # the container carries the service's container labels, on that worker
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    labels = json.loads(
        cluster.docker(node, "inspect", "-f", "{{json .Config.Labels}}", container).stdout
    )
    assert labels["tljh-repo2docker-dev.swarm-test.user"] == "alice"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hub-" + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_task_reaches_the_host_on_the_cluster_network(cluster: Cluster, web):
    """A server calls its hub back: a hub on the host listens on the
    cluster network's gateway address."""
    server = http.server.ThreadingHTTPServer((cluster.gateway, 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{cluster.gateway}:{server.server_address[1]}/api"
        code = (
            "import urllib.request\n"
            f"print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
        )
        result = cluster.task_exec(web[0], ["python3", "-c", code])
        assert result.stdout.strip() == "hub-/api"
    finally:
        server.shutdown()
        server.server_close()


def test_home_written_on_one_worker_is_read_on_another(cluster: Cluster, image):
    # as the hub on the host (the control node) would: the home exists,
    # owned by the user, before the start; the same path on every node
    home = os.path.join(cluster.homes, f"alice-{cluster.run_id}")
    os.mkdir(home)
    os.chown(home, 1000, 1000)
    mount = f"type=bind,src={home},dst=/home/jovyan"
    token = f"written-on-worker1-{cluster.run_id}"
    cluster.service_create(
        "writer",
        image[0],
        ["sh", "-c", f"echo {token} >/home/jovyan/note.txt"],
        constraints=["node.hostname==worker1"],
        mounts=[mount],
    )
    written = cluster.wait_task("writer", "complete")
    assert cluster.task_node(written).hostname == "worker1"
    cluster.service_create(
        "reader",
        image[0],
        ["sh", "-c", f"grep -qx {token} /home/jovyan/note.txt && cat /home/jovyan/note.txt"],
        constraints=["node.hostname==worker2"],
        mounts=[mount],
    )
    read = cluster.wait_task("reader", "complete")  # a failed grep fails the task
    assert cluster.task_node(read).hostname == "worker2"
    assert token in cluster.service_logs("reader")
    # the same file on the host, written as the user (uid 1000)
    note = os.path.join(home, "note.txt")
    assert Path(note).read_text().strip() == token
    assert os.stat(note).st_uid == 1000


def test_tasks_cannot_resolve_or_reach_outside(cluster: Cluster, web):
    """No packet is sent off the machine to show it: the configuration that
    guarantees it, and a lookup that fails at once on 127.0.0.1."""
    task = web[0]
    resolv = cluster.task_exec(task, ["cat", "/etc/resolv.conf"]).stdout
    nameservers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == ["127.0.0.1"], resolv
    start = time.monotonic()
    lookup = cluster.task_exec(task, ["getent", "hosts", "example.org"], check=False)
    assert lookup.returncode != 0 and lookup.stdout == ""
    assert time.monotonic() - start < 5
    probe = (
        "import socket\ntry:\n    socket.getaddrinfo('example.org', 443)\n"
        "except socket.gaierror as e:\n    print('refused', e.errno)\nelse:\n    print('resolved')"
    )
    assert cluster.task_exec(task, ["python3", "-c", probe]).stdout.startswith("refused")
    # every node engine hands its containers that resolver ...
    for node in cluster.nodes:
        daemon = json.loads(cluster.exec(node, ["cat", "/etc/docker/daemon.json"]).stdout)
        assert daemon["dns"] == ["127.0.0.1"]
    # ... and the nodes sit on an internal network: the host forwards
    # nothing from it to any other interface (no route off the machine)
    internal = run(["docker", "network", "inspect", "-f", "{{.Internal}}", cluster.network])
    assert internal.stdout.strip() == "true"
    for node in cluster.nodes:
        networks = json.loads(
            run(
                ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", node.container]
            ).stdout
        )
        assert list(networks) == [cluster.network]
        dns = run(["docker", "inspect", "-f", "{{json .HostConfig.Dns}}", node.container])
        assert json.loads(dns.stdout) == ["127.0.0.1"]
