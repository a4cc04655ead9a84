"""JupyterHub config for the demo hub and the end-to-end tests.

It sets what TLJH itself would set (its defaults and config.yaml handling),
then calls this plugin's real TLJH hook, exactly as TLJH does. The plugin's
settings come from $TLJH_INSTALL_PREFIX/config/config.yaml like on a server.

Environment:
  TLJH_INSTALL_PREFIX  folder with config/config.yaml and state/ (required)
  R2D_DEV_PORT         public port of the proxy (8000)
  R2D_DEV_HUB_PORT     hub port on the Docker bridge (15001, as TLJH)
  R2D_DEV_PROXY_API_PORT  configurable-http-proxy API port (15002)
  R2D_DEV_ADMIN        admin user name (admin)
  R2D_DEV_PASSWORD     shared password of the dev authenticator (unset: any)
  R2D_DEV_API_TOKEN    if set, a service "dev-admin" with this admin token
  R2D_DEV_CHP          path to configurable-http-proxy
"""

import os

from tljh_repo2docker.hubconfig import config_d_files
from tljh_repo2docker.plugin import tljh_custom_jupyterhub_config

c = get_config()  # noqa: F821 (given by JupyterHub)
env = os.environ.get
prefix = os.environ["TLJH_INSTALL_PREFIX"]
state = os.path.join(prefix, "state")
os.makedirs(state, exist_ok=True)

# --- what TLJH sets before calling plugins --------------------------------------
c.JupyterHub.hub_port = int(env("R2D_DEV_HUB_PORT", "15001"))
c.JupyterHub.cleanup_servers = False
c.Spawner.default_url = "/lab"
# TLJH points every spawner at its own user environment; the plugin must win.
c.Spawner.cmd = ["/opt/tljh/user/bin/jupyterhub-singleuser"]
c.JupyterHub.db_url = "sqlite:///" + os.path.join(state, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(state, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(state, "jupyterhub.pid")

# --- local differences: a dev login and configurable-http-proxy instead of Traefik --
c.JupyterHub.bind_url = f"http://127.0.0.1:{env('R2D_DEV_PORT', '8000')}"
c.JupyterHub.authenticator_class = "dummy"
if env("R2D_DEV_PASSWORD"):
    c.DummyAuthenticator.password = env("R2D_DEV_PASSWORD")
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {env("R2D_DEV_ADMIN", "admin")}
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('R2D_DEV_PROXY_API_PORT', '15002')}"
if env("R2D_DEV_CHP"):
    c.ConfigurableHTTPProxy.command = [env("R2D_DEV_CHP")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(state, "proxy.pid")
c.JupyterHub.allow_named_servers = True

if env("R2D_DEV_API_TOKEN"):
    c.JupyterHub.services = [{"name": "dev-admin", "api_token": env("R2D_DEV_API_TOKEN")}]
    c.JupyterHub.load_roles = [{"name": "admin", "services": ["dev-admin"]}]

# --- the plugin, as TLJH calls it --------------------------------------------------
tljh_custom_jupyterhub_config(c)

# --- last, as TLJH: $TLJH_INSTALL_PREFIX/config/jupyterhub_config.d/*.py ------------
for path in config_d_files(prefix):
    load_subconfig(path)  # noqa: F821 (given by JupyterHub)
