"""Resolve a ref (branch, tag, HEAD or commit) to a commit before building.

``pick_commit`` is pure (parses ``git ls-remote`` output); ``resolve_ref``
runs git as a subprocess with an argument list and no terminal prompts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal

from . import netguard

log = logging.getLogger("tljh_repo2docker.service")

_FULL_SHA_RE = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


class RefNotFound(LookupError):
    """The repository answered but has no such ref (or could not be read)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        # what git said: for the admin's log, never for the person
        self.detail = detail


def pick_commit(ls_remote_output: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output, or None.

    Preference follows git's own: an exact full ref, then a branch, then a tag
    (peeled ``^{}`` lines win over the tag object itself).
    """
    refs: dict[str, str] = {}
    for line in ls_remote_output.splitlines():
        sha, _, name = line.strip().partition("\t")
        if _FULL_SHA_RE.match(sha) and name:
            refs[name] = sha
    candidates = [
        f"{ref}^{{}}",  # a full tag name: the commit, not the tag object
        ref,
        f"refs/heads/{ref}",
        f"refs/tags/{ref}^{{}}",
        f"refs/tags/{ref}",
    ]
    for name in candidates:
        if name in refs:
            return refs[name]
    return None


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for git: never prompt, never read a terminal."""
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="/bin/true",
        SSH_ASKPASS="/bin/true",
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
    )
    env.update(extra or {})
    return env


async def _git(args: list[str], timeout: float, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        # git's helpers (ssh, git-remote-https) hold the pipes too: kill the
        # whole process group, or wait() would wait for them.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"git exited with {proc.returncode}"
        # git's words tell an open port from a closed one and say the HTTP
        # status: the person learns only that the fetch failed.
        raise RefNotFound(netguard.FETCH_FAILED, detail)
    return out.decode(errors="replace")


async def guarded_env(
    guard: netguard.NetGuard, repo: str, env: dict[str, str] | None = None
) -> dict[str, str]:
    """``env`` for git fetching ``repo`` through ``guard``; RefNotFound (the
    same words as any failed fetch) when the address is refused."""
    try:
        return await guard.git_env(repo, env or git_env())
    except netguard.Refused as e:
        log.warning("refused to fetch %s: %s", repo[:300], e.reason)
        raise RefNotFound(netguard.FETCH_FAILED, e.reason) from None


async def resolve_ref(
    repo: str,
    ref: str,
    *,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    guard: netguard.NetGuard | None = None,
) -> str:
    """The full commit hash that ``ref`` names in ``repo`` right now.

    With ``guard``, the repository's address is checked and git pinned to it.
    """
    env = env or git_env()
    if guard is not None:
        env = await guarded_env(guard, repo, env)
    try:
        out = await asyncio.wait_for(_git(["ls-remote", "--", repo], timeout, env), timeout)
    except asyncio.TimeoutError:
        raise RefNotFound(f"the repository did not answer within {timeout:g} s") from None
    except RefNotFound as e:
        log.warning("could not list refs of %s: %s", repo[:300], e.detail)
        raise
    commit = pick_commit(out, ref)
    if commit:
        return commit
    if _FULL_SHA_RE.match(ref):
        # A commit that no ref points at; repo2docker fetches it and fails
        # clearly if it does not exist.
        return ref
    raise RefNotFound(f"no branch or tag named {ref!r} in the repository")
