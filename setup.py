"""Packaging metadata for tljh-repo2docker: the one place that defines it."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "tljh_repo2docker" / "_version.py").read_text()
).group(1)

setup(
    name="tljh-repo2docker",
    version=VERSION,
    description=(
        "A TLJH plugin that builds repositories into environments with repo2docker "
        "and starts persistent JupyterHub servers in them"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    # templates/ and static/ live at the top of the repository and are
    # installed as sub-packages so that pip and editable installs find them.
    packages=[
        "tljh_repo2docker",
        "tljh_repo2docker.service",
        "tljh_repo2docker.templates",
        "tljh_repo2docker.static",
    ],
    package_dir={
        "tljh_repo2docker": "tljh_repo2docker",
        "tljh_repo2docker.templates": "templates",
        "tljh_repo2docker.static": "static",
    },
    package_data={
        "tljh_repo2docker.templates": ["*.html", "hub/*.html", "service/*.html"],
        "tljh_repo2docker.static": ["*.css", "*.js", "*.svg"],
        "tljh_repo2docker.service": ["openapi.yaml"],
    },
    # Everything the hub process imports is an install requirement: TLJH
    # starts the hub before it installs tljh_extra_hub_pip_packages.
    install_requires=[
        "aiodocker>=0.21",
        "docker>=5",
        "dockerspawner>=13",
        "escapism>=1",
        "jinja2>=3",
        "jupyter-repo2docker>=2024.7",
        "jupyterhub>=5.2,<7",
        "pluggy>=1",
        "pyyaml>=5",
        "sqlalchemy>=2",
        "tornado>=6.2",
        "traitlets>=5.9",
    ],
    extras_require={
        "test": [
            "jsonschema>=4",
            "openapi-spec-validator>=0.7",
            "playwright>=1.40",
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "pyyaml>=6",
            "requests>=2.28",
            "ruff>=0.6",
        ],
    },
    entry_points={
        "tljh": ["tljh_repo2docker = tljh_repo2docker.plugin"],
        "console_scripts": ["tljh-repo2docker = tljh_repo2docker.cli:main"],
    },
    classifiers=[
        "Framework :: Jupyter",
        "Framework :: Jupyter :: JupyterLab",
        "Programming Language :: Python :: 3",
    ],
)
