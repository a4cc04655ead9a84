"""HTML pages of the environments service (Jinja, no front-end build step).

Pages log in through the hub (OAuth); forms post back with the XSRF token.
They call the same operations as the REST API.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from sqlalchemy import func, select
from tornado import web
from tornado.log import app_log

from .. import access, assets, validation
from . import degraded, store
from . import operations as ops
from .handlers import BaseHandler

# Only this service's own scripts; data: images for Bootstrap's form icons.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'"
# The hub's page.html carries one inline script (require.js config and
# window.jhdata): the page's CSP allows exactly that script by its hash.
INLINE_SCRIPT_RE = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.S)
# static files of the hub that its page.html asks for (the rest are ours)
HUB_STATIC = ("css/", "js", "components/", "images/", "favicon.ico")


@functools.cache
def page_templates():
    """Our templates, then the installed hub's own: service/base.html extends
    the hub's page.html, so that these pages get the hub's navigation bar,
    theme toggle and stylesheet of whatever JupyterHub version runs them."""
    from jupyterhub._data import DATA_FILES_PATH

    return assets.jinja_env(os.path.join(DATA_FILES_PATH, "templates"))


def csp_with_inline_script(html: str) -> str:
    match = INLINE_SCRIPT_RE.search(html)
    if not match:
        return CSP
    digest = base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()
    return CSP + f"; script-src 'self' 'sha256-{digest}'"


def json_in_script(text: str) -> str:
    """A JSON string body that cannot end a <script> element (for jhdata)."""
    escaped = json.dumps(text)[1:-1]
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def relative_time(value, now: datetime | None = None) -> str:
    """'just now', '5 minutes ago', 'in 2 hours', '3 days ago' for an ISO time
    (naive times are UTC, as the store writes them); '' when there is none."""
    if not value:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    seconds = int(((now or datetime.now(timezone.utc)) - value).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (
        ("year", 31536000),
        ("month", 2592000),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= size:
            n = seconds // size
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def absolute_time(value) -> str:
    """'2026-12-01 13:35 UTC' for an ISO time (the tooltip of a relative one)."""
    if not value:
        return ""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return parsed.strftime("%Y-%m-%d %H:%M UTC")


def duration_text(seconds) -> str:
    """'42 s', '3 min 5 s', '1 h 2 min'."""
    if seconds is None:
        return ""
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def build_policy() -> str:
    """The plugin's build_policy (users, admins or group:NAME), as the hub
    configuration passed it to the service."""
    try:
        settings = json.loads(os.environ.get("TLJH_R2D_SETTINGS") or "{}")
    except ValueError:
        settings = {}
    policy = settings.get("build_policy") if isinstance(settings, dict) else None
    return policy if isinstance(policy, str) and policy else "users"


ERROR_LINE_RE = re.compile(
    # whole words: a path such as test_failed_build/ is no error
    r"\b(?:error|failed|fatal|exception|denied|cannot)\b|not found|no such|non-zero",
    re.I,
)
# BuildKit's step and time prefixes ("#7 0.762 "), left out to compare lines
BUILDKIT_PREFIX_RE = re.compile(r"^(?:#\d+ )?(?:\d+\.\d+ )?")


def summary_line(line: str) -> str:
    """A log line as the summary shows it, or '' for one it leaves out: the
    long repo2docker command line a failed build ends with, and separators."""
    text = BUILDKIT_PREFIX_RE.sub("", line.strip())
    if (
        len(text) > 2000
        or text.startswith(("docker buildx", "Error during build: Command", "---"))
        or "'docker', 'buildx'" in text
    ):
        return ""
    return text


def error_summary(log_text: str, lines: int = 6, width: int = 300) -> str:
    """The last error lines of a build log, the way a person looks for them:
    near the end, lines that say error/failed/..., each once, and not the
    command line. log.js does the same for a build that ends while its page
    is open."""
    tail = [summary_line(ln) for ln in log_text.splitlines()[-60:]]
    tail = list(dict.fromkeys(t for t in tail if t))
    errors = [t for t in tail if ERROR_LINE_RE.search(t)]
    chosen = (errors or tail)[-lines:]
    return "\n".join(t if len(t) <= width else t[: width - 1] + "\u2026" for t in chosen)


def build_numbers(db, env_id: int) -> dict[int, int]:
    """Build id -> its number within the environment (1, 2, ...): build ids
    count across all environments, which reads wrong on one environment's page."""
    ids = db.scalars(
        select(store.Build.id).where(store.Build.environment_id == env_id).order_by(store.Build.id)
    ).all()
    return {build_id: n for n, build_id in enumerate(ids, start=1)}


class PageHandler(BaseHandler):
    def hub_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/"

    def static_file_url(self, path: str, include_version: bool = True) -> str:
        """Our static files, or the hub's for what the hub's page.html asks for."""
        if path.startswith(HUB_STATIC):
            return self.hub_prefix() + "static/" + path
        return self.static_url(path, include_version=include_version)

    def hub_page_context(self) -> dict:
        """What the hub's page.html reads, for the user this page is for."""
        hub = self.hub_prefix()
        user = dict(self.current_user or {})
        scopes = self.user_scopes()
        if user.get("admin"):
            scopes = scopes | {"admin-ui"}  # the navbar's Admin link
        if user:
            user["json_escaped_name"] = json_in_script(user.get("name", ""))
        return {
            "base_url": hub,
            "logo_url": hub + "home",
            "user": user or None,
            "parsed_scopes": scopes,
            "admin_access": bool(user.get("admin")),
            "no_spawner_check": True,
            "services": [],
            "logout_url": hub + "logout",
            "login_url": hub + "login",
            "version_hash": "",
        }

    def render_page(self, template: str, status: int = 200, **context):
        self.set_status(status)
        html = (
            page_templates()
            .get_template(template)
            .render(
                **self.hub_page_context(),
                prefix=self.service.service_prefix,
                hub_prefix=self.hub_prefix(),
                can_manage=self.can_manage,
                can_build=self.can_build,
                build_policy=build_policy(),
                xsrf_form_html=self.xsrf_form_html,
                xsrf_token=self.xsrf_token.decode(),
                static_url=self.static_file_url,
                format_bytes=validation.format_bytes,
                relative_time=relative_time,
                absolute_time=absolute_time,
                duration_text=duration_text,
                # a notice on every page while a health check fails
                health_problems=self.service.health.failing(),
                **context,
            )
        )
        self.set_header("Content-Security-Policy", csp_with_inline_script(html))
        self.finish(html)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, ops.NotFound):
            status_code, message = 404, str(exc)
            self.set_status(404)
        elif degraded.reason(exc):
            status_code, message = 503, degraded.reason(exc)
            self.set_status(503)
        self.render_page("service/error.html", status=status_code, message=message)

    def log_exception(self, typ, value, tb):
        if typ is ops.NotFound:
            return
        if degraded.reason(value):
            app_log.warning("503 %s: %s", self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code=500, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if degraded.reason(exc):
            status_code = 503  # Docker or the database is unavailable
        super().send_error(status_code, **kwargs)

    def require_read(self):
        if not self.can_read:
            raise web.HTTPError(403, "You may not see environments on this hub.")

    def require_build(self):
        if not self.can_build:
            raise web.HTTPError(403, "You may not build environments on this hub.")

    def editable(self, db, name: str):
        env = ops.find(db, name, self.viewer())
        if not self.can_edit(env):
            raise web.HTTPError(403, "Only the owner or an administrator may change %s.", name)
        return env

    def form(self, *names: str) -> dict:
        """The named fields of a posted form ('' for a missing one)."""
        return {n: self.get_body_argument(n, "").strip() for n in names}

    def checkbox(self, name: str) -> bool:
        """A form checkbox: browsers send it only when it is ticked."""
        return self.get_body_argument(name, "") == "on"

    def user_quotas(self) -> dict | None:
        if self.can_manage:
            return None  # admins are exempt
        with self.db() as db:
            return self.quotas(db)

    def go(self, path: str):
        self.redirect(self.service.service_prefix + path)

    def quotas(self, db) -> dict:
        """The limits a user (not an admin) builds within, and where they are."""
        builds = self.service.builds
        since = store.utcnow() - timedelta(days=1)
        mine = select(func.count(store.Build.id)).where(store.Build.requested_by == self.username)
        return {
            "environments": self.service.max_environments_per_user,
            "builds_per_day": builds.max_daily_per_user,
            "builds_at_once": builds.max_concurrent_per_user,
            "owned": db.scalar(
                select(func.count(store.Environment.id)).where(
                    store.Environment.owner == self.username
                )
            ),
            "builds_today": db.scalar(
                mine.where(store.Build.created_at >= since, ~store.Build.cached)
            ),
        }


class ListPage(PageHandler):
    @web.authenticated
    async def get(self):
        self.require_read()
        await self.service.adopt_images()
        viewer = self.viewer()
        with self.db() as db:
            envs = [
                e
                for e in db.scalars(select(store.Environment).order_by(store.Environment.name))
                if access.can_see(e.owner, e.visibility, viewer)
            ]
            models = await self.environment_models(db, envs)
            quotas = self.quotas(db)
        self.render_page("service/environments.html", environments=models, quotas=quotas)


class NewPage(PageHandler):
    # copy_files is a checkbox (sent only when ticked): read apart
    fields = tuple(sorted(ops.CREATE_FIELDS - {"copy_files"}))

    @web.authenticated
    def get(self):
        self.require_build()
        visibility = "public" if self.can_manage else "private"
        self.render_page(
            "service/new.html",
            values={"ref": "HEAD", "visibility": visibility, "copy_files": True},
            error=None,
            quotas=self.user_quotas(),
        )

    @web.authenticated
    async def post(self):
        self.require_build()
        values = self.form(*self.fields)
        creds = self.form("username", "token")
        data = {k: v for k, v in values.items() if v != ""}
        data.update({k: v for k, v in creds.items() if v})
        data["copy_files"] = values["copy_files"] = self.checkbox("copy_files")
        try:
            await self.service.require_docker()  # all or nothing: before saving
            with self.db() as db:
                env, build = ops.create_environment(
                    self.service, db, data, self.username, admin=self.can_manage
                )
        except (ops.InvalidInput, ops.Conflict, ops.QuotaExceeded, degraded.Unavailable) as e:
            # the token is never sent back into the page
            status = {ops.Conflict: 409, ops.QuotaExceeded: 429, degraded.Unavailable: 503}.get(
                type(e), 400
            )
            self.render_page(
                "service/new.html",
                status=status,
                values=values,
                error=str(e),
                # the field to mark as wrong (InvalidInput says which)
                error_field=getattr(e, "field", None),
            )
            return
        self.go(f"environments/{env.name}/builds/{build.id}")


class EnvironmentPage(PageHandler):
    @web.authenticated
    async def get(self, name, action=None):
        if action:
            raise web.HTTPError(405, "use the form on the environment's page")
        self.require_read()
        await self.show(name)

    async def show(self, name, error=None, status=200, error_action=None):
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            may_edit = self.can_edit(env)
            (model,) = await self.environment_models(db, [env])
            builds = db.scalars(
                select(store.Build)
                .where(store.Build.environment_id == env.id)
                .order_by(store.Build.id.desc())
                .limit(50)
            ).all()
            numbers = build_numbers(db, env.id)
            build_models = [
                {**self.build_model(b, env.name), "number": numbers.get(b.id, b.id)} for b in builds
            ]
            env_versions = await ops.list_versions(self.service, env)
        self.render_page(
            "service/environment.html",
            status=status,
            env=model,
            builds=build_models,
            error=error,
            launch=self.launch_link(model),
            can_edit=may_edit,
            versions=env_versions,
            error_action=error_action,
            saved=status == 200 and self.get_query_argument("saved", "") == "1",
            # sharing offers the groups the user is in (the OAuth token can read them)
            group_choices=sorted(self.viewer().groups),
        )

    def launch_link(self, env: dict) -> dict | None:
        """A Binder-style link (and badges) that builds and opens this repository."""
        if not env["ref"]:
            return None
        origin = f"{self.request.protocol}://{self.request.host}"
        prefix = self.service.service_prefix
        url = f"{origin}{prefix}v2/git/{quote(env['repo'], safe='')}/{quote(env['ref'], safe='')}"
        badge = f"{origin}{self.static_url('badge.svg', include_version=False)}"
        return {
            "url": url,
            "markdown": f"[![Launch on the hub]({badge})]({url})",
            "rst": f".. image:: {badge}\n   :target: {url}",
        }

    @web.authenticated
    async def post(self, name, action):
        self.require_build()
        try:
            with self.db() as db:
                env = self.editable(db, name)
                if action == "edit":
                    data = self.form(
                        "display_name", "mem_limit", "cpu_limit", "ref", "build_args", "visibility"
                    )
                    data["visibility"] = self.visibility_from_form(data["visibility"])
                    data["copy_files"] = self.checkbox("copy_files")
                    await ops.update_environment(self.service, db, env, data, admin=self.can_manage)
                elif action == "rebuild":
                    await self.service.require_docker()
                    build = ops.start_build(
                        self.service, db, env, {}, self.username, admin=self.can_manage
                    )
                    return self.go(f"environments/{env.name}/builds/{build.id}")
                elif action == "delete":
                    if self.get_body_argument("confirm", "") != env.name:
                        raise ops.InvalidInput(
                            "confirm", "type the environment's name to delete it"
                        )
                    stop = self.get_body_argument("stop_servers", "") == "on"
                    await ops.delete_environment(self.service, db, env, stop)
                    return self.go("")
        except (
            ops.InvalidInput,
            ops.Conflict,
            ops.QuotaExceeded,
            ops.Forbidden,
            degraded.Unavailable,
        ) as e:
            status = {
                ops.Conflict: 409,
                ops.QuotaExceeded: 429,
                ops.Forbidden: 403,
                degraded.Unavailable: 503,
            }
            return await self.show(
                name, error=str(e), status=status.get(type(e), 400), error_action=action
            )
        self.go(f"environments/{name}" + ("?saved=1" if action == "edit" else ""))

    def visibility_from_form(self, posted: str) -> str:
        """The edit form's radio buttons and group checkboxes as one visibility
        (public, private or groups:a,b); a posted ``visibility`` field (API-like
        clients, launch environments) is used as it is."""
        mode = self.get_body_argument("visibility_mode", "")
        if mode == "groups":
            groups = [g.strip() for g in self.get_body_arguments("visibility_groups") if g.strip()]
            if not groups:
                raise ops.InvalidInput("visibility", "tick at least one group to share with")
            return "groups:" + ",".join(dict.fromkeys(groups))
        return mode or posted


class BuildPage(PageHandler):
    @web.authenticated
    async def get(self, name, build_id):
        self.require_read()
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            may_edit = self.can_edit(env)
            build = ops.find_build(db, env, build_id)
            model = self.build_model(build, env.name)
            model["number"] = build_numbers(db, env.id).get(build.id, build.id)
            log = self.service.builds.log_for(build)
            env_display = env.display_name
            # "Start a server" is offered for what the picker offers
            startable = env.visibility != access.LAUNCH
        entries = log.entries_from(0)
        log_text = "".join(e["message"] for _, e in entries)
        failed = model["status"] in ("failed", "cancelled", "interrupted")
        self.render_page(
            "service/build.html",
            env_name=name,
            env_display=env_display,
            build=model,
            startable=startable,
            error_summary=error_summary(log_text) if failed else "",
            log_text=log_text,
            log_next=(entries[-1][0] + 1) if entries else 0,
            can_edit=may_edit,
        )

    @web.authenticated
    async def post(self, name, build_id):
        self.require_build()
        try:
            with self.db() as db:
                env = self.editable(db, name)
                await ops.cancel_build(self.service, db, env, ops.find_build(db, env, build_id))
        except ops.Conflict:
            pass  # finished meanwhile: the page shows how
        self.go(f"environments/{name}/builds/{build_id}")


class VersionDeletePage(EnvironmentPage):
    # an EnvironmentPage: a refusal shows the environment's page (with its
    # launch link) and the reason, not a 500
    async def get(self, name, commit):
        raise web.HTTPError(405, "use the form on the environment's page")

    @web.authenticated
    async def post(self, name, commit):
        self.require_build()
        try:
            with self.db() as db:
                env = self.editable(db, name)
                await ops.delete_version(self.service, env, commit)
        except ops.Conflict as e:
            return await self.show(name, error=str(e), status=409)
        except ops.NotFound as e:
            # e.g. a second submit of the same form: the version is gone already
            return await self.show(name, error=str(e), status=404)
        self.go(f"environments/{name}")


def routes(prefix: str) -> list:
    name = r"(?P<name>[a-z0-9][a-z0-9._-]{0,62})"
    build = r"(?P<build_id>[0-9]{1,12})"
    return [
        (prefix, ListPage),
        (prefix + "new", NewPage),
        (prefix + rf"environments/{name}", EnvironmentPage),
        (prefix + rf"environments/{name}/(?P<action>edit|rebuild|delete)", EnvironmentPage),
        (prefix + rf"environments/{name}/builds/{build}", BuildPage),
        (prefix + rf"environments/{name}/builds/{build}/cancel", BuildPage),
        (
            prefix + rf"environments/{name}/versions/(?P<commit>[0-9a-f]{{7,64}})/delete",
            VersionDeletePage,
        ),
    ]
