"""How a user's server container is confined: pure construction, no I/O.

What a server may never do, whatever its image says:
- run as root: it runs as the uid that owns the user's home (never 0);
- gain privileges: ``no-new-privileges`` (setuid files in the image do
  nothing) and every capability dropped (no ``mknod`` of devices, no
  ``chown`` to other users, no raw network, no mounts);
- leave a setuid/setgid file in the home: the seccomp profile below;
- fork without end or take all the memory: a pids limit and a memory limit.

The seccomp profile, and why it looks the way it does
-----------------------------------------------------
A profile given to Docker REPLACES Docker's default one (Docker 20.10 has no
way to add rules to it, and its default is compiled into the daemon, so it
cannot be read at run time and extended). Two ways were possible:

- a deny-by-default allowlist: the same shape as Docker's default, but a
  full syscall list to maintain; anything missing breaks images in ways users
  cannot diagnose;
- allow-by-default plus a denylist (chosen). With every capability dropped
  and a non-root uid, the syscalls Docker's default profile lets only
  privileged containers make (mount, module loading, clock setting, ...)
  fail with EPERM in the kernel anyway. What Docker's default denies even to
  unprivileged containers is denied here too: new namespaces (``unshare``,
  ``setns``, ``clone`` with namespace flags, ``clone3``), the keyring, BPF,
  perf events, ``userfaultfd``, the new mount API and file handles. Added on
  top: ``io_uring`` (its OPENAT operation takes a mode that no seccomp rule
  can see) and ``openat2`` (its mode is inside a struct), so no path around
  the mode rules is left.

The mode rules refuse (EPERM) every call that would set S_ISUID or S_ISGID:
``chmod``/``fchmod``/``fchmodat``/``fchmodat2``, ``open``/``openat``/``creat``
with such a mode (O_CREAT or O_TMPFILE; libcs pass mode 0 otherwise) and
``mknod``/``mknodat`` (which makes regular files without any capability).
Setting the bits is what is refused, so a server cannot even make a setgid
directory; nothing a notebook needs.

Known limit of allow-by-default: a syscall the container runtime's libseccomp
does not know by name is not filtered. ``fchmodat2`` (Linux 6.6) needs
libseccomp 2.5.5 or a distribution backport (Debian 12's runc has it); the
real-Docker test ``tests/security/test_server_isolation.py`` calls it by
number and fails where it is not refused.
"""

from __future__ import annotations

import json
import re

S_ISUID = 0o4000
S_ISGID = 0o2000
EPERM = 1
ENOSYS = 38

# clone() flags that make a namespace: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET (Docker's default allows clone only without them).
NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)

# Refused outright (EPERM): kernel surface no notebook needs.
DENIED_SYSCALLS = (
    # namespaces and mounts (a user namespace would hand out capabilities again)
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # kernel attack surface reachable without capabilities
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    # the machine's own business (capability checks refuse these too)
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_adjtime",
    "iopl",
    "ioperm",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
)

# Refused with ENOSYS, as if the kernel lacked them: libc then falls back to
# the older call that the rules can check (clone, openat).
UNIMPLEMENTED_SYSCALLS = ("clone3", "openat2")

# syscall -> index of its mode argument
MODE_ARGUMENT = {
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


def _bit_set(index: int, bit: int) -> dict:
    return {"index": index, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}


def seccomp_profile() -> dict:
    """The server containers' seccomp profile (Docker's JSON format).

    Each rule of the list is one libseccomp rule: the conditions inside one
    rule are ANDed, rules are ORed, so "any of these bits set" is one rule
    per bit.
    """
    rules: list[dict] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {
            "names": list(UNIMPLEMENTED_SYSCALLS),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        },
    ]
    for flag in NAMESPACE_FLAGS:
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [_bit_set(0, flag)],
            }
        )
    for name, index in MODE_ARGUMENT.items():
        for bit in (S_ISUID, S_ISGID):
            rules.append(
                {
                    "names": [name],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": EPERM,
                    "args": [_bit_set(index, bit)],
                }
            )
    # No "architectures": the runtime filters the native one and refuses
    # calls made through any other ABI (e.g. 32-bit int 0x80), which
    # therefore cannot go around these rules.
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}


class UnsafeUser(ValueError):
    """The container would run as root; the message is for the user."""


def container_user(uid: int, gid: int) -> str:
    """``uid:gid`` for Docker's ``user``; never root."""
    if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
        raise UnsafeUser(
            f"servers never run as root, and this home's owner is uid {uid}: "
            "ask an administrator to give the home to the user's own uid"
        )
    if not isinstance(gid, int) or isinstance(gid, bool) or gid <= 0:
        raise UnsafeUser(
            f"servers never run with the root group (gid {gid}): "
            "ask an administrator to set repo2docker.user_gid"
        )
    return f"{uid}:{gid}"


# Security options an admin's extra_host_config may not replace.
_OWN_SECURITY_OPTS = ("seccomp", "no-new-privileges")


def host_config(admin: dict, pids_limit: int) -> dict:
    """The admin's ``extra_host_config`` with the confinement forced on top.

    Admins keep their own settings (devices, shm size, AppArmor profile, ...)
    except those that would undo the confinement.
    """
    config = {k: v for k, v in (admin or {}).items() if k not in ("privileged", "cap_add")}
    opts = [
        opt
        for opt in config.get("security_opt") or []
        if re.split(r"[=:]", str(opt), maxsplit=1)[0] not in _OWN_SECURITY_OPTS
    ]
    config["security_opt"] = [
        *opts,
        "no-new-privileges:true",
        "seccomp=" + json.dumps(seccomp_profile(), separators=(",", ":")),
    ]
    config["cap_drop"] = ["ALL"]
    config["privileged"] = False
    if pids_limit and pids_limit > 0:
        config["pids_limit"] = int(pids_limit)
    return config


# What a process that wanted root at start prints when it meets this confinement.
_PERMISSION_RE = re.compile(
    r"permission denied|operation not permitted|EACCES|EPERM|must be run as root|"
    r"not running as root|are you root|setuid|setgid|sudo:",
    re.IGNORECASE,
)


def exit_reason(log_tail: str, uid: int) -> str:
    """Why a server that exited while starting may have done so, for the user."""
    base = (
        f"Servers on this hub run as uid {uid}, never as root, without capabilities "
        "and without gaining privileges (setuid and sudo do nothing)."
    )
    if _PERMISSION_RE.search(log_tail or ""):
        return (
            base + " Its log shows a permission problem: the image probably needs root "
            "when it starts, which this hub never allows: do what needs root in the "
            "Dockerfile's RUN steps, not when the server starts."
        )
    return base
