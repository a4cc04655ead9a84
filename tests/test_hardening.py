"""Unit tests of the server confinement (tljh_repo2docker.hardening): the
seccomp profile's rules, the container user, the host config, the messages.
The real-Docker proof is tests/security/test_server_isolation.py."""

from __future__ import annotations

import json

import pytest

from tljh_repo2docker import hardening

SETUID, SETGID = 0o4000, 0o2000


def rules_for(profile: dict, name: str) -> list[dict]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def refused(profile: dict, name: str, args: tuple = ()) -> int | None:
    """The errno the profile answers ``name(*args)`` with, or None if allowed:
    a small model of libseccomp's rule semantics (rules ORed, args ANDed)."""
    for rule in rules_for(profile, name):
        conditions = rule.get("args") or []
        if all(
            c["op"] == "SCMP_CMP_MASKED_EQ" and (args[c["index"]] & c["value"]) == c["valueTwo"]
            for c in conditions
        ):
            assert rule["action"] == "SCMP_ACT_ERRNO"
            return rule["errnoRet"]
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    return None


PROFILE = hardening.seccomp_profile()


@pytest.mark.parametrize(
    "name, args",
    [
        ("chmod", ("/f", 0o4755)),
        ("chmod", ("/f", 0o2755)),
        ("chmod", ("/f", 0o6777)),
        ("fchmod", (3, 0o4700)),
        ("fchmodat", (-100, "/f", 0o2700, 0)),
        ("fchmodat2", (-100, "/f", 0o4755, 0)),
        ("creat", ("/f", 0o4755)),
        ("open", ("/f", 0o100, 0o4755)),
        ("openat", (-100, "/f", 0o100, 0o2755)),
        ("openat", (-100, "/f", 0o20200000, 0o4755)),  # O_TMPFILE
        ("mknod", ("/f", 0o100000 | 0o4755, 0)),  # a regular file needs no capability
        ("mknodat", (-100, "/f", 0o100000 | 0o2755, 0)),
    ],
)
def test_every_way_to_set_setuid_or_setgid_is_refused(name, args):
    assert refused(PROFILE, name, args) == hardening.EPERM


@pytest.mark.parametrize(
    "name, args",
    [
        ("chmod", ("/f", 0o755)),
        ("chmod", ("/f", 0o1777)),  # sticky bit: harmless
        ("fchmod", (3, 0o600)),
        ("fchmodat", (-100, "/f", 0o700, 0)),
        ("fchmodat2", (-100, "/f", 0o644, 0x100)),
        ("openat", (-100, "/f", 0o100, 0o666)),
        ("openat", (-100, "/f", 0, 0)),
        ("open", ("/f", 0o2, 0)),
        ("mknod", ("/f", 0o10000 | 0o644, 0)),  # a FIFO
        ("clone", (0x01200011, 0, 0, 0, 0)),  # what fork() passes
        ("clone", (0x003D0F00, 0, 0, 0, 0)),  # what pthread_create passes
        ("read", (0, 0, 0)),
    ],
)
def test_ordinary_calls_are_allowed(name, args):
    assert refused(PROFILE, name, args) is None


@pytest.mark.parametrize("flag", hardening.NAMESPACE_FLAGS)
def test_clone_into_a_new_namespace_is_refused(flag):
    assert refused(PROFILE, "clone", (0x01200011 | flag, 0, 0, 0, 0)) == hardening.EPERM


@pytest.mark.parametrize(
    "name", ["unshare", "setns", "keyctl", "bpf", "userfaultfd", "io_uring_setup", "mount"]
)
def test_kernel_surface_is_refused(name):
    assert refused(PROFILE, name, (0, 0, 0, 0, 0, 0)) == hardening.EPERM


@pytest.mark.parametrize("name", ["clone3", "openat2"])
def test_calls_whose_arguments_no_rule_can_see_look_unimplemented(name):
    # ENOSYS makes glibc fall back to clone/openat, which the rules check
    assert refused(PROFILE, name, (0, 0, 0, 0)) == hardening.ENOSYS


def test_profile_is_docker_json():
    text = json.dumps(PROFILE)
    assert json.loads(text) == PROFILE
    for rule in PROFILE["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args"}
        assert rule["names"] and all(isinstance(n, str) for n in rule["names"])
        for condition in rule.get("args", []):
            assert set(condition) == {"index", "value", "valueTwo", "op"}
            assert 0 <= condition["index"] <= 5


def test_mode_rules_cover_the_mode_argument_of_each_call():
    # a wrong index would filter another argument and let the mode through
    assert hardening.MODE_ARGUMENT == {
        "chmod": 1,
        "fchmod": 1,
        "fchmodat": 2,
        "fchmodat2": 2,
        "creat": 1,
        "open": 2,
        "openat": 3,
        "mknod": 1,
        "mknodat": 2,
    }


@pytest.mark.parametrize("uid, gid", [(0, 100), (-1, 100), (1000, 0), (True, 100), ("0", 100)])
def test_container_user_is_never_root(uid, gid):
    with pytest.raises(hardening.UnsafeUser) as e:
        hardening.container_user(uid, gid)
    assert "root" in str(e.value)


def test_container_user():
    assert hardening.container_user(1000, 100) == "1000:100"


def test_host_config_forces_the_confinement_over_the_admins_settings():
    admin = {
        "shm_size": "1G",
        "cap_add": ["SYS_ADMIN"],
        "privileged": True,
        "cap_drop": ["NET_RAW"],
        "security_opt": [
            "apparmor=docker-default",
            "seccomp=unconfined",
            "no-new-privileges:false",
        ],
    }
    config = hardening.host_config(admin, 1024)
    assert config["shm_size"] == "1G"
    assert "cap_add" not in config and config["privileged"] is False
    assert config["cap_drop"] == ["ALL"]
    opts = config["security_opt"]
    assert "apparmor=docker-default" in opts
    assert "seccomp=unconfined" not in opts and "no-new-privileges:false" not in opts
    assert "no-new-privileges:true" in opts
    (seccomp,) = [o for o in opts if o.startswith("seccomp=")]
    assert json.loads(seccomp[len("seccomp=") :]) == PROFILE
    assert config["pids_limit"] == 1024
    assert admin["cap_add"] == ["SYS_ADMIN"]  # the admin's own dict is not changed


def test_pids_limit_zero_means_none():
    assert "pids_limit" not in hardening.host_config({}, 0)


def test_exit_reason_says_servers_run_without_root():
    reason = hardening.exit_reason("", 1000)
    assert "uid 1000" in reason and "never as root" in reason
    assert "permission problem" not in reason


@pytest.mark.parametrize(
    "log",
    [
        "touch: cannot touch '/root/x': Permission denied",
        "chown: changing ownership of '/srv': Operation not permitted",
        "This script must be run as root",
        "sudo: effective uid is not 0, is /usr/bin/sudo on a file system with the 'nosuid' option",
    ],
)
def test_exit_reason_points_at_permission_problems(log):
    assert "permission problem" in hardening.exit_reason(log, 1000)
