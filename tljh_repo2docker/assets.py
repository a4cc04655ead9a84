"""Where the templates/ and static/ folders are, installed or editable.

They sit at the top of the repository and are installed as the packages
``tljh_repo2docker.templates`` and ``tljh_repo2docker.static``.
"""

from __future__ import annotations

from importlib.resources import files

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES_DIR = str(files("tljh_repo2docker.templates"))
STATIC_DIR = str(files("tljh_repo2docker.static"))


def jinja_env(*extra_dirs: str) -> Environment:
    """Autoescaping Jinja environment over our templates (and ``extra_dirs``)."""
    return Environment(
        loader=FileSystemLoader([TEMPLATES_DIR, *extra_dirs]),
        autoescape=select_autoescape(default=True),
    )
