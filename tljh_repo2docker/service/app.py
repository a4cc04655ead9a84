"""The environments service: a hub-managed traitlets Application running tornado.

Started by the hub (``python -m tljh_repo2docker.service``) with the
JUPYTERHUB_* environment of a managed service. The plugin's settings arrive
as JSON in $TLJH_R2D_SETTINGS (the ``repo2docker:`` section of tljh-config).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuthCallbackHandler
from sqlalchemy import select
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Float, Integer, Unicode, default
from traitlets.config import Application

from .. import hubconfig, tljhconfig, validation
from ..assets import STATIC_DIR, jinja_env
from ..builder import BuildSettings
from ..catalogue import Catalogue
from ..envrecords import EnvironmentRecords
from . import api, degraded, dockerops, launch, myservers, pages, status, store
from .builds import BuildManager, Conflict
from .handlers import SCOPES, ServiceState
from .health import Health, HealthHandler
from .hubclient import HubClient
from .metrics import Metrics, MetricsHandler
from .models import ListCache
from .oauthcookie import MultiPathHubOAuth
from .servers import remove_image, servers_for


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    # the same HubOAuth instance as every other handler (it holds the PKCE state)
    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


class EnvironmentsService(Application):
    name = "tljh-repo2docker-service"
    description = "Build and manage repo2docker environments for JupyterHub"

    db_url = Unicode(
        help="SQLAlchemy URL of the service's database (default: SQLite in TLJH's state dir)."
    ).tag(config=True)
    cookie_secret_file = Unicode(
        help="File holding the service's cookie secret (created on first start)."
    ).tag(config=True)
    build_concurrency = Integer(1, help="repo2docker builds that may run at once.").tag(config=True)
    log_head_lines = Integer(1000, help="First lines of a build log that are kept.").tag(
        config=True
    )
    log_tail_lines = Integer(2000, help="Last lines of a build log that are kept.").tag(config=True)
    max_environments_per_user = Integer(10, help="Environments a user (not an admin) may own.").tag(
        config=True
    )
    max_concurrent_builds_per_user = Integer(
        1, help="Builds a user (not an admin) may have queued or running at once."
    ).tag(config=True)
    max_versions_per_environment = Integer(
        5, help="Built versions kept per environment (0: all); older unused ones are removed."
    ).tag(config=True)
    max_image_disk = Unicode(
        "", help="Disk all images may take (e.g. 200G); the oldest unused versions go first."
    ).tag(config=True)
    max_daily_builds_per_user = Integer(
        20, help="Builds (not counting reused images) a user may start in 24 hours."
    ).tag(config=True)
    service_prefix = Unicode(help="URL prefix of the service (from the hub).").tag(config=True)
    cors_allow_origin = Unicode(
        "",
        help="Origins (e.g. https://example.org, or *) whose pages may call the Binder "
        "API (build/, versions) from a browser, as BinderHub's cors_allow_origin. "
        "Empty: only pages of this hub.",
    ).tag(config=True)
    binder_service_name = Unicode(
        "binder",
        help="Also answer BinderHub's API at /services/<this name>/ (where "
        "jupyterhub-fancy-profiles looks for it); empty to turn off.",
    ).tag(config=True)
    bind_url = Unicode(help="Where to listen (from the hub: $JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )
    db_busy_timeout = Float(
        0.5,
        help="Seconds a write waits for another process's lock on the (SQLite) database "
        "before the request answers 503; reads never wait.",
    ).tag(config=True)
    health_min_free_disk = Unicode(
        "1G", help="Free disk below which the health check fails (images and homes)."
    ).tag(config=True)
    startup_retry_seconds = Float(
        10.0, help="While the service cannot start (e.g. its database), how often it tries again."
    ).tag(config=True)
    health_cache_seconds = Float(
        5.0, help="How long a passing health check's result is reused."
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        # the hub reads the same database (envrecords.py): one setting for both
        return BuildSettings(config=self.config).db_url

    @default("cookie_secret_file")
    def _default_cookie_secret_file(self):
        return os.path.join(tljhconfig.state_dir(), "tljh-repo2docker-cookie-secret")

    @default("service_prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/environments/")

    @default("bind_url")
    def _default_bind_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:15003")

    @property
    def binder_prefix(self) -> str:
        """Where the Binder API answers too (launch.routes), or ''."""
        if not self.binder_service_name:
            return ""
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/")
        return f"{base}/services/{self.binder_service_name}/"

    def load_plugin_settings(self):
        """tljh-config's repo2docker section, under any command-line options."""
        raw = os.environ.get("TLJH_R2D_SETTINGS")
        settings = json.loads(raw) if raw else tljhconfig.load_section()
        # the same sources as the hub: tljh-config, then jupyterhub_config.d
        config, warnings = hubconfig.plugin_config(settings, tljhconfig.install_prefix())
        for warning in warnings:
            self.log.warning(warning)
        config.merge(self.config)  # explicit options win
        # update_config (not assignment to self.config's items) reloads our traits
        self.update_config(config)

    def cookie_secret(self) -> bytes:
        path = self.cookie_secret_file
        try:
            with open(path, "rb") as f:
                secret = bytes.fromhex(f.read().decode().strip())
            if len(secret) >= 32:
                return secret
        except (FileNotFoundError, ValueError):
            pass
        secret = secrets.token_bytes(32)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex())
        return secret

    def make_app(self) -> web.Application:
        prefix = self.service_prefix
        self.hub_auth = MultiPathHubOAuth(
            api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            cache_max_age=60,
            # who may use the service at all; each handler checks its own scope
            access_scopes=SCOPES,
            # the login cookie reaches the Binder API's second prefix too
            extra_cookie_paths=[self.binder_prefix] if self.binder_prefix else [],
        )
        handlers = [
            (prefix + "health", HealthHandler),
            (prefix + "metrics", MetricsHandler),
            (prefix + "oauth_callback", OAuthCallbackHandler),
            *api.routes(prefix + "api/v1"),
            *launch.routes(prefix, self.binder_prefix),
            *myservers.routes(prefix),
            *pages.routes(prefix),
            *status.routes(prefix),
        ]
        return web.Application(
            handlers,
            hub_auth=self.hub_auth,
            service=self,
            cookie_secret=self.cookie_secret(),
            xsrf_cookies=True,
            jinja=jinja_env(),
            static_path=STATIC_DIR,
            static_url_prefix=prefix + "static/",
        )

    def initialize(self, argv=None):
        super().initialize(argv)
        self.load_plugin_settings()
        self.settings = BuildSettings(config=self.config, parent=self)
        # settings are checked here: a wrong one is said at once (never retried)
        self.max_image_disk_bytes = validation.disk_size(self.max_image_disk, "max_image_disk")
        self.min_free_disk = validation.disk_size(self.health_min_free_disk, "health_min_free_disk")
        self.hub = HubClient(
            os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api"),
            os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        )
        self.sessions = None
        self.store_error: Exception | None = None
        try:
            self.sessions = self.open_store()
        except Exception as e:  # run() serves a degraded service and retries
            self.store_error = e
            self.log.error("cannot open the database %s: %s", self.db_url, e)

    def open_store(self):
        return store.open_store(self.db_url, busy_timeout=self.db_busy_timeout)

    def homes_dir(self) -> str:
        spawner = self.config.get("Repo2DockerSpawner", {})
        return str(spawner.get("homes_dir", "/home"))

    async def setup(self):
        """Everything the service needs before it listens; raises when a part
        is missing (run() then serves 503 with the reason and retries).
        Docker is not among them: it is connected on first use."""
        if self.sessions is None:
            self.sessions = self.open_store()
        self.docker = dockerops.LazyDocker()
        # where users' servers run: this host's engine, or a swarm (issue 12)
        self.servers = servers_for(self.docker, self.settings.hub_name, self.settings.swarm_manager)
        self.state = ServiceState()
        self.list_cache = ListCache()
        self._adopted = frozenset()
        self._images_checked = 0.0
        self._images_refresh = None
        self.metrics = Metrics()
        # a registry's store and timers when one is set (issue 12); else as ever
        self.catalogue = Catalogue(
            self.settings.hub_name,
            **self.settings.catalogue_options(),
            records=EnvironmentRecords(engine=self.sessions.engine),
        )
        # one client for the catalogue and the rest: made lazily, so that a
        # missing Docker fails requests (503), not the start
        self.catalogue._docker = self.docker
        self.builds = BuildManager(
            self.sessions,
            self.settings,
            self.docker,
            self.catalogue,
            concurrency=self.build_concurrency,
            log_head=self.log_head_lines,
            log_tail=self.log_tail_lines,
            max_concurrent_per_user=self.max_concurrent_builds_per_user,
            max_daily_per_user=self.max_daily_builds_per_user,
            max_versions=self.max_versions_per_environment,
            max_image_disk=self.max_image_disk_bytes,
            metrics=self.metrics,
            servers=self.servers,
        )
        self.health = Health(
            self,
            ttl=self.health_cache_seconds,
            min_free_bytes=self.min_free_disk,
            homes_dir=self.homes_dir(),
        )
        resumed, interrupted = await self.builds.recover()
        if resumed:
            self.log.info("%d builds left by a previous start are queued again", resumed)
        if interrupted:
            self.log.warning("marked %d builds interrupted by a restart", interrupted)

    async def run(self):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.setup()
        except Exception as e:
            self.log.exception("the environments service cannot start")

            async def retry():
                await self.setup()
                return True

            message = degraded.describe_startup_failure(self.store_error or e)
            started = await degraded.serve(
                self.bind_url,
                self.service_prefix,
                message,
                retry=retry,
                retry_every=self.startup_retry_seconds,
                stop=stop,
            )
            if not started:
                return
            self.log.info("the environments service could start after all")
        url = urlsplit(self.bind_url)
        server = HTTPServer(self.make_app(), xheaders=True, max_body_size=api.MAX_BODY)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info("environments service listening on %s%s", self.bind_url, self.service_prefix)
        await stop.wait()
        self.log.info("stopping: cancelling running builds")
        server.stop()
        await self.builds.shutdown()
        await self.catalogue.close()
        await self.servers.close()
        await self.docker.close()

    def start(self):
        configure_logging()
        asyncio.run(self.run())

    # --- Docker state shared by handlers ---------------------------------------
    async def require_docker(self):
        """Before a change that needs Docker (creating, building): refuse it
        with 503 while Docker is unreachable, so that nothing is saved."""
        try:
            await self.docker.ping()
        except Exception as e:
            raise degraded.Unavailable(degraded.reason(e) or str(e)) from e

    async def _images(self):
        """Every image of this hub, never older than the catalogue's max_age.

        The catalogue answers from a cache and refreshes it afterwards (good
        for spawn forms). The service's lists must show what Docker has now:
        an image the CLI built or an admin removed a moment ago. Requests
        that arrive together share one Docker call.
        """
        if time.monotonic() - self._images_checked <= self.catalogue.max_age:
            return await self.catalogue.images()
        if self._images_refresh is None or self._images_refresh.done():
            self._images_refresh = asyncio.ensure_future(self.catalogue.images(fresh=True))
            self._images_refresh.add_done_callback(self._images_fetched)
        return await asyncio.shield(self._images_refresh)

    def _images_fetched(self, task):
        if not task.cancelled() and task.exception() is None:
            self._images_checked = time.monotonic()

    async def current_images(self) -> dict:
        """Environment name -> its newest image (what Docker has now)."""
        from ..labels import latest_per_environment

        return {info.environment: info for info in latest_per_environment(await self._images())}

    async def adopt_images(self):
        """Environments built outside the service (the command line, another
        service process) appear in its database from their image labels."""
        images = await self.current_images()
        names = frozenset(images)
        if names == self._adopted:
            return  # nothing new since the last look
        with self.sessions() as db:
            known = set(db.scalars(select(store.Environment.name)).all())
            for name in sorted(set(images) - known):
                info = images[name]
                env = store.Environment(
                    name=name,
                    display_name=info.display_name,
                    repo=info.repo,
                    ref=info.ref or "HEAD",
                    mem_limit=info.mem_limit,
                    cpu_limit=info.cpu_limit,
                    created_by=info.built_by,
                )
                db.add(env)
                db.flush()
                db.add(
                    store.Build(
                        environment_id=env.id,
                        status=store.SUCCEEDED,
                        ref=env.ref,
                        commit=info.commit,
                        image=info.image,
                        requested_by=info.built_by,
                        started_at=store.utcnow(),
                        finished_at=store.utcnow(),
                        log_head='{"phase":"built","message":"Built outside the service\\n"}',
                        log_lines=1,
                    )
                )
                self.log.info("adopted environment %s from image %s", name, info.image)
            db.commit()
        self._adopted = names

    async def server_usage(self) -> dict[str, list[dict]]:
        return await self.state.server_usage(self.servers)

    async def stop_servers(self, servers: list[dict], timeout: float = 60):
        """Stop servers through the hub, then wait until their containers are gone."""
        for server in servers:
            code = await self.hub.stop_server(server["user"], server["server_name"])
            self.log.info("stopping %s's server: hub says %s", server["user"], code)
        deadline = asyncio.get_running_loop().time() + timeout
        ids = {s["id"] for s in servers}
        while ids and asyncio.get_running_loop().time() < deadline:
            self.state.invalidate()
            usage = await self.server_usage()
            ids &= {s["id"] for group in usage.values() for s in group}
            if ids:
                await asyncio.sleep(0.5)
        if ids:
            raise Conflict(f"servers did not stop within {timeout:g} s; try again")

    async def remove_images(self, name: str):
        """Every build of environment ``name``: this host's copies, and with a
        registry its tags there too (the registry may hold builds that this
        host never kept)."""
        for summary in await dockerops.environment_images(
            self.docker, self.settings.hub_name, name
        ):
            tags = [t for t in summary.get("RepoTags") or [] if t != "<none>:<none>"]
            for ref in tags or [summary["Id"]]:
                await dockerops.remove_image(self.docker, ref)
        if not self.catalogue.is_local:
            for info in await self.catalogue.images(fresh=True):
                if info.environment == name:
                    try:
                        await remove_image(self.docker, self.catalogue, info.image)
                    except ValueError as e:  # another tag is the same image
                        self.log.warning("left in the registry: %s", e)
        self.catalogue.invalidate()


def configure_logging():
    # tornado's access and error logs go where the hub's output goes
    logging.basicConfig(
        level=logging.INFO,
        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s",
    )


def main(argv=None):
    """Start the service; if even its settings are wrong, start a degraded
    service that says so (see degraded.py: exiting would take the hub down)."""
    try:
        app = EnvironmentsService.instance()
        app.initialize(argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise  # --help and the like
        failure = f"invalid command line or settings (exit code {e.code})"
    except Exception as e:
        failure = degraded.describe_startup_failure(e)
    else:
        app.start()
        return
    configure_logging()
    logging.getLogger("tljh_repo2docker.service").exception("settings failed")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/environments/")
    bind_url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:15003")
    message = failure + "; fix the settings and restart the hub (tljh-config reload hub)"
    asyncio.run(degraded.serve(bind_url, prefix, message))
    sys.exit(0)
