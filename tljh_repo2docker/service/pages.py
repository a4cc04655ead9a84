"""HTML pages of the environments service (Jinja, no front-end build step).

Pages log in through the hub (OAuth); forms post back with the XSRF token.
They call the same operations as the REST API.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from sqlalchemy import select
from tornado import web

from .. import access, validation
from . import operations as ops
from . import store
from .handlers import BaseHandler

# Only this service's own scripts; data: images for Bootstrap's form icons.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'"


class PageHandler(BaseHandler):
    def hub_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/"

    def render_page(self, template: str, status: int = 200, **context):
        self.set_status(status)
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'",
        )
        jinja = self.settings["jinja"]
        html = jinja.get_template(template).render(
            prefix=self.service.service_prefix,
            hub_prefix=self.hub_prefix(),
            user=self.current_user,
            can_manage=self.can_manage,
            can_build=self.can_build,
            xsrf_form_html=self.xsrf_form_html,
            xsrf_token=self.xsrf_token.decode(),
            static_url=self.static_url,
            format_bytes=validation.format_bytes,
            **context,
        )
        self.finish(html)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, ops.NotFound):
            status_code, message = 404, str(exc)
            self.set_status(404)
        self.render_page("service/error.html", status=status_code, message=message)

    def log_exception(self, typ, value, tb):
        if typ is ops.NotFound:
            return
        super().log_exception(typ, value, tb)

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

    def go(self, path: str):
        self.redirect(self.service.service_prefix + path)


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
        self.render_page("service/environments.html", environments=models)


class NewPage(PageHandler):
    fields = tuple(sorted(ops.CREATE_FIELDS))

    @web.authenticated
    def get(self):
        self.require_build()
        visibility = "public" if self.can_manage else "private"
        self.render_page(
            "service/new.html", values={"ref": "HEAD", "visibility": visibility}, error=None
        )

    @web.authenticated
    async def post(self):
        self.require_build()
        values = self.form(*self.fields)
        creds = self.form("username", "token")
        data = {k: v for k, v in values.items() if v != ""}
        data.update({k: v for k, v in creds.items() if v})
        try:
            with self.db() as db:
                env, build = ops.create_environment(
                    self.service, db, data, self.username, admin=self.can_manage
                )
        except (ops.InvalidInput, ops.Conflict, ops.QuotaExceeded) as e:
            # the token is never sent back into the page
            status = {ops.Conflict: 409, ops.QuotaExceeded: 429}.get(type(e), 400)
            self.render_page("service/new.html", status=status, values=values, error=str(e))
            return
        self.go(f"environments/{env.name}/builds/{build.id}")


class EnvironmentPage(PageHandler):
    @web.authenticated
    async def get(self, name, action=None):
        if action:
            raise web.HTTPError(405, "use the form on the environment's page")
        self.require_read()
        await self.show(name)

    async def show(self, name, error=None, status=200):
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
            build_models = [self.build_model(b, env.name) for b in builds]
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
                    await ops.update_environment(self.service, db, env, data)
                elif action == "rebuild":
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
        except (ops.InvalidInput, ops.Conflict, ops.QuotaExceeded) as e:
            status = {ops.Conflict: 409, ops.QuotaExceeded: 429}.get(type(e), 400)
            return await self.show(name, error=str(e), status=status)
        self.go(f"environments/{name}")


class BuildPage(PageHandler):
    @web.authenticated
    async def get(self, name, build_id):
        self.require_read()
        with self.db() as db:
            env = ops.find(db, name, self.viewer())
            may_edit = self.can_edit(env)
            build = ops.find_build(db, env, build_id)
            model = self.build_model(build, env.name)
            log = self.service.builds.log_for(build)
            env_display = env.display_name
        entries = log.entries_from(0)
        self.render_page(
            "service/build.html",
            env_name=name,
            env_display=env_display,
            build=model,
            log_text="".join(e["message"] for _, e in entries),
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


class VersionDeletePage(PageHandler):
    @web.authenticated
    async def post(self, name, commit):
        self.require_build()
        try:
            with self.db() as db:
                env = self.editable(db, name)
                await ops.delete_version(self.service, env, commit)
        except (ops.Conflict, ops.NotFound) as e:
            return await EnvironmentPage.show(self, name, error=str(e), status=409)
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
