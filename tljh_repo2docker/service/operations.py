"""What an admin can do to environments, shared by the REST API and the pages.

Each operation validates its raw input and raises ``InvalidInput`` (400),
``Conflict`` (409) or ``NotFound`` (404); the callers turn those into JSON
or into a message on the page.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select

from .. import access, labels, providers, validation, versions
from ..builder import validate_request
from ..validation import InvalidInput
from . import dockerops, store
from .builds import Conflict, Credentials, QuotaExceeded
from .servers import remove_image

MAX_CREDENTIAL_LENGTH = 1024
CREATE_FIELDS = {
    "name",
    "repo",
    "ref",
    "display_name",
    "mem_limit",
    "cpu_limit",
    "build_args",
    "visibility",
    "copy_files",
}
CREDENTIAL_FIELDS = {"username", "token"}
UPDATE_FIELDS = {
    "display_name",
    "mem_limit",
    "cpu_limit",
    "ref",
    "build_args",
    "visibility",
    "promoted",
    "copy_files",
}

__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "QuotaExceeded"]


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


def check_fields(data: dict, allowed: set[str]):
    unknown = set(data) - allowed
    if unknown:
        raise InvalidInput("body", "unknown fields: " + ", ".join(sorted(unknown))[:200])


def boolean_field(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(name, "must be true or false")
    return value


def credentials_from(data: dict) -> Credentials | None:
    """Optional username + token for a private repository (both or neither)."""
    username, token = data.get("username"), data.get("token")
    if username in (None, "") and token in (None, ""):
        return None
    for field, value in (("username", username), ("token", token)):
        if not isinstance(value, str) or not value:
            raise InvalidInput(field, "private repositories need both a username and a token")
        if len(value) > MAX_CREDENTIAL_LENGTH:
            raise InvalidInput(field, f"must be at most {MAX_CREDENTIAL_LENGTH} characters")
        if any(c in value for c in "\r\n\x00"):
            raise InvalidInput(field, "must not contain line breaks")
    return Credentials(username, token)


def find(db, name: str, viewer: access.Viewer | None = None) -> store.Environment:
    """The environment ``name``; one ``viewer`` may not see does not exist."""
    env = store.find_environment(db, name)
    if env is None or (viewer and not access.can_see(env.owner, env.visibility, viewer)):
        raise NotFound(f"no environment named {name[:100]}")
    return env


def check_edit(env: store.Environment, may_edit: bool):
    if not may_edit:
        raise Forbidden(f"only the owner of {env.name} or an administrator may change it")


def find_build(db, env: store.Environment, build_id) -> store.Build:
    build = db.get(store.Build, int(build_id))
    if build is None or build.environment_id != env.id:
        raise NotFound(f"environment {env.name} has no build {build_id}")
    return build


def create_environment(service, db, data: dict, username: str, admin: bool = True):
    """Validate, store and queue the first build. Returns (environment, build).

    An administrator's environment belongs to the hub and is public unless
    said otherwise; a user's belongs to them and is private until shared.
    """
    check_fields(data, CREATE_FIELDS | CREDENTIAL_FIELDS)
    visibility = access.validate(data.get("visibility") or ("public" if admin else "private"))
    request = validate_request(
        service.settings,
        name=data.get("name"),
        repo=data.get("repo"),
        ref=data.get("ref") or "HEAD",
        display_name=data.get("display_name"),
        mem_limit=data.get("mem_limit"),
        cpu_limit=data.get("cpu_limit"),
        build_args=data.get("build_args"),
        admin=admin,
    )
    credentials = credentials_from(data)
    if not admin and request.name.startswith(tuple(f"{p}-" for p in providers.PROVIDERS)):
        raise InvalidInput("name", "names starting with a launch provider are for launch links")
    if store.find_environment(db, request.name) is not None:
        # One namespace for all users: a name someone holds cannot be given
        # to someone else, so "taken" is unavoidable. The answer is the same
        # for every taken name, visible or not, and says nothing more (not
        # "exists", not whose); reads of an environment you cannot see answer
        # 404 exactly as for a name nobody holds.
        raise Conflict(f"the name {request.name} is not available; choose another")
    if not admin:
        owned = db.scalar(
            select(func.count(store.Environment.id)).where(store.Environment.owner == username)
        )
        if owned >= service.max_environments_per_user:
            service.metrics.quota_refused("environments")
            raise QuotaExceeded(
                f"you have {owned} environments, the most allowed here; delete one first",
                "environments",
            )
    env = store.Environment(
        name=request.name,
        display_name=request.display_name,
        repo=request.repo,
        ref=request.ref,
        mem_limit=request.mem_limit,
        cpu_limit=request.cpu_limit,
        build_args=json.dumps(dict(request.build_args)),
        created_by=username,
        owner="" if admin else username,
        visibility=visibility,
        copy_files=boolean_field(data, "copy_files", default=True),
    )
    db.add(env)
    db.flush()
    build = service.builds.start(db, env, username, credentials, exempt=admin)
    return env, build


def start_build(service, db, env: store.Environment, data: dict, username: str, admin=True):
    """Build the environment's ref again (a new commit, or a cached image)."""
    check_fields(data, CREDENTIAL_FIELDS)
    return service.builds.start(db, env, username, credentials_from(data), exempt=admin)


async def update_environment(service, db, env: store.Environment, data: dict, admin=True):
    """Change display name, limits or ref; built images get the new labels."""
    check_fields(data, UPDATE_FIELDS)
    promotion = launch_visibility(env, data, admin)
    if store.active_build(db, env) is not None:
        raise Conflict("wait for the running build to finish, or cancel it")
    changes = {}
    if "display_name" in data:
        changes["display_name"] = validation.display_name(data["display_name"])
    if "mem_limit" in data:
        changes["mem_limit"] = validation.mem_limit(data["mem_limit"])
    if "cpu_limit" in data:
        changes["cpu_limit"] = validation.cpu_limit(data["cpu_limit"])
    if "ref" in data:
        changes["ref"] = validation.ref(data["ref"])
    if "build_args" in data:
        # used by the next build (an image's build arguments cannot change)
        changes["build_args"] = json.dumps(validation.build_args(data["build_args"]))
    if "visibility" in data and data["visibility"] != env.visibility:
        changes["visibility"] = access.validate(data["visibility"])
    if promotion is not None:
        changes["visibility"] = promotion
    if "copy_files" in data:
        changes["copy_files"] = boolean_field(data, "copy_files", default=True)
    for key, value in changes.items():
        setattr(env, key, value)
    env.updated_at = store.utcnow()
    if changes.keys() & {"display_name", "mem_limit", "cpu_limit", "visibility", "copy_files"}:
        # the labels too, on this host's copies: they keep the catalogue
        # right from Docker alone; a registry's images keep theirs and
        # the catalogue takes the database's (envrecords.py)
        await relabel_images(service, env)
    db.commit()
    service.catalogue.invalidate()
    return env


def launch_visibility(env: store.Environment, data: dict, admin: bool) -> str | None:
    """``promoted`` (launch-made environments only, admins only): true puts
    one in the pickers of those its visibility names (public unless given),
    false takes it out again. Who sees a launch-made environment is the
    admins' choice, not its owner's. Returns the new visibility, or None."""
    wants_visibility = "visibility" in data and data["visibility"] != env.visibility
    if "promoted" not in data and not (env.launched_by and wants_visibility):
        return None
    if not env.launched_by:
        raise InvalidInput("promoted", "only environments made by launch links are promoted")
    if not admin:
        raise Forbidden("only an administrator may promote a launch-made environment")
    promoted = data.get("promoted", True)
    if not isinstance(promoted, bool):
        raise InvalidInput("promoted", "must be true or false")
    if not promoted:
        return access.LAUNCH
    if data.get("visibility") in (None, "", access.LAUNCH):
        return access.PUBLIC
    return access.validate(data["visibility"])


async def relabel_images(service, env: store.Environment):
    new = {
        labels.DISPLAY_NAME: env.display_name,
        labels.MEM_LIMIT: validation.format_bytes(env.mem_limit),
        labels.CPU_LIMIT: "" if env.cpu_limit is None else f"{env.cpu_limit:g}",
        labels.OWNER: env.owner,
        labels.VISIBILITY: env.visibility,
        labels.COPY_FILES: labels.format_bool(env.copy_files),
    }
    hub = service.settings.hub_name
    for summary in await dockerops.environment_images(service.docker, hub, env.name):
        for tag in summary.get("RepoTags") or []:
            if tag and tag != "<none>:<none>":
                await dockerops.relabel(service.docker, tag, new)
    service.catalogue.invalidate()


async def delete_environment(service, db, env: store.Environment, stop_servers: bool):
    """Remove the environment and its images. Homes are never touched."""
    if store.active_build(db, env) is not None:
        raise Conflict(f"cancel the running build of {env.name} first")
    service.state.invalidate()
    servers = (await service.server_usage()).get(env.name, [])
    if servers and not stop_servers:
        users = ", ".join(sorted({s["user"] for s in servers}))[:500]
        raise Conflict(
            f"{len(servers)} server(s) use {env.name} (users: {users}); "
            "confirm stopping them to delete it"
        )
    await service.stop_servers(servers)
    await service.remove_images(env.name)
    db.delete(env)
    db.commit()


async def list_versions(service, env: store.Environment) -> list[dict]:
    """The environment's built versions, newest (the current one) first."""
    images = [i for i in await service.catalogue.images(fresh=True) if i.environment == env.name]
    in_use = await service.servers.images_in_use()
    newest = versions.newest_first(images)
    return [
        {
            "commit": info.commit,
            "image": info.image,
            "size": info.size,
            "built_at": info.built_at or None,
            "built_by": info.built_by or None,
            "current": n == 0,
            "in_use": info.image in in_use or info.image_id in in_use,
        }
        for n, info in enumerate(newest)
    ]


async def delete_version(service, env: store.Environment, commit: str):
    """Remove one built version; refused while a server uses it."""
    for version in await list_versions(service, env):
        if version["commit"].startswith(commit):
            if version["in_use"]:
                raise Conflict(f"a server uses {version['image']}; stop it first")
            try:
                await remove_image(service.docker, service.catalogue, version["image"])
            except ValueError as e:  # the registry holds it under another tag too
                raise Conflict(str(e)) from None
            return
    raise NotFound(f"{env.name} has no version {commit}")


async def cancel_build(service, db, env: store.Environment, build: store.Build):
    if build.status in store.FINAL_STATES or not service.builds.cancel(build.id):
        raise Conflict(f"build {build.id} is already {build.status}")
    await service.builds.wait(build.id)
    db.expire_all()
    return db.get(store.Build, build.id)
