"""The ``repo2docker:`` section of TLJH's config.yaml, and where TLJH keeps things.

TLJH has no public API for reading its config, so we read the YAML file
ourselves (read-only; ``tljh-config`` stays the only writer).
"""

from __future__ import annotations

import os

import yaml

SECTION = "repo2docker"


def install_prefix() -> str:
    return os.environ.get("TLJH_INSTALL_PREFIX", "/opt/tljh")


def config_file() -> str:
    return os.path.join(install_prefix(), "config", "config.yaml")


def state_dir() -> str:
    return os.path.join(install_prefix(), "state")


def load_section(path: str | None = None) -> dict:
    """The ``repo2docker`` section as a dict ({} when absent or empty)."""
    path = path or config_file()
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        return {}
    section = data.get(SECTION) if isinstance(data, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: '{SECTION}' must be a mapping of keys to values")
    return section
