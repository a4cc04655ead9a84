"""Command line: build and list environments without the web UI.

    tljh-repo2docker build REPO --ref main --name demo [--display-name ...]
    tljh-repo2docker list

Settings come from TLJH's config.yaml (``repo2docker:`` section) where it
exists; flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import secrets
import signal
import sys

import aiodocker

from . import hubconfig, tljhconfig, validation
from .builder import BuildSettings, validate_request
from .buildjob import BuildFailed, run_build
from .catalogue import Catalogue, DockerUnavailable


def _settings(args) -> BuildSettings:
    # the same sources as the hub and the service: tljh-config, then config.d
    c, warnings = hubconfig.plugin_config(tljhconfig.load_section(), tljhconfig.install_prefix())
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.hub_name:
        c.BuildSettings.hub_name = args.hub_name
    if getattr(args, "allow_local_repos", False):
        c.BuildSettings.allow_local_repos = True
    if getattr(args, "repo2docker_config", None):
        c.BuildSettings.repo2docker_config = args.repo2docker_config
    return BuildSettings(config=c)


# C0 controls but tab and newline, DEL, and the C1 controls (0x9b is a
# one-byte CSI on some terminals).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    """``text`` with every terminal control shown, never obeyed.

    Build logs come from repositories anyone writes: an escape sequence could
    retitle the terminal, hide lines, fake a prompt or (OSC 52) write the
    clipboard. Each control character becomes visible text (ESC -> ``^[``, a
    C1 character -> ``\\x9b``), so what follows it is printed as plain text.
    Carriage returns become line breaks: progress bars stay readable and
    cannot overwrite earlier lines.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")

    def show(match):
        code = ord(match.group())
        if code < 0x20:
            return "^" + chr(code + 0x40)
        if code == 0x7F:
            return "^?"
        return f"\\x{code:02x}"

    return _CONTROLS.sub(show, text)


def _who() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


async def _build(args) -> int:
    settings = _settings(args)
    try:
        request = validate_request(
            settings,
            name=args.name,
            repo=args.repo,
            ref=args.ref,
            display_name=args.display_name,
            mem_limit=args.mem_limit,
            cpu_limit=args.cpu_limit,
            built_by=_who(),
            # whoever runs this command can run docker on the host already
            admin=True,
        )
    except validation.InvalidInput as e:
        print(f"error: {inert(str(e))}", file=sys.stderr)
        return 2

    def show(line):
        text = inert(line.message)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    # a stop (SIGTERM, e.g. from a timeout or systemd) ends the build like
    # Ctrl-C does: repo2docker's process group or builder container goes too
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    async with aiodocker.Docker() as docker:
        try:
            result = await run_build(
                settings,
                request,
                show,
                docker=docker,
                build_runner=settings.build_runner(docker),
                # not a service build: the service's restart leaves it alone
                job=f"cli-{os.getpid()}-{secrets.token_hex(4)}",
            )
        except BuildFailed as e:
            print(f"error: {inert(str(e))}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            print("error: stopped (SIGTERM); nothing was built", file=sys.stderr)
            return 143
    print(f"{'reused' if result.cached else 'built'} {result.image}")
    return 0


async def _list(args) -> int:
    # one listing and out: no event stream to follow
    settings = _settings(args)
    catalogue = Catalogue(settings.hub_name, watch_events=False, **settings.catalogue_options())
    try:
        environments = await catalogue.environments(fresh=True)
    except DockerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await catalogue.close()
    if args.json:
        print(json.dumps([e.__dict__ | {"extra": None} for e in environments], indent=2))
        return 0
    for env in environments:
        # labels are written by whoever built the image: shown, never obeyed
        row = f"{env.environment}\t{env.image}\t{env.repo}@{env.ref}\t{env.display_name}"
        print("\t".join(inert(col) for col in row.split("\t")))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tljh-repo2docker", description=__doc__.split("\n")[0])
    p.add_argument("--hub-name", help="label of this hub's images (repo2docker.hub_name)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) an environment's image")
    b.add_argument("repo", help="repository URL (https://, git://, ssh, file:// if allowed)")
    b.add_argument("--ref", default="HEAD", help="branch, tag or commit (default: HEAD)")
    b.add_argument("--name", required=True, help="environment name: lowercase, digits, .-_")
    b.add_argument("--display-name", help="name shown in the server picker")
    b.add_argument("--mem-limit", help="memory limit of servers, e.g. 2G")
    b.add_argument("--cpu-limit", help="CPU limit of servers, e.g. 1.5")
    b.add_argument("--allow-local-repos", action="store_true", help="accept file:// repositories")
    b.add_argument(
        "--repo2docker-config",
        action="append",
        help="repo2docker config file (may repeat; default: repo2docker.repo2docker_config)",
    )
    ls = sub.add_parser("list", help="list the environments in the catalogue")
    ls.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = {"build": _build, "list": _list}[args.command]
    return asyncio.run(handler(args))


if __name__ == "__main__":
    sys.exit(main())
