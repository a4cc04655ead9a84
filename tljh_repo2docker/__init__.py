"""tljh-repo2docker: repo2docker environments and persistent homes for TLJH."""

from ._version import __version__

__all__ = ["__version__"]
