"""Validation of everything a person or a network hands us: pure functions.

Each validator returns the normalised value or raises ``InvalidInput`` with a
message written for the person who typed the value. Nothing here touches the
network, Docker or the file system.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

MAX_REPO_LENGTH = 2048
MAX_REF_LENGTH = 255
MAX_DISPLAY_NAME_LENGTH = 100
MAX_NAME_LENGTH = 63

DEFAULT_SCHEMES = ("https", "http", "git", "ssh")

# Environment names end up in Docker image names, URLs and labels: keep them
# to the lowercase subset that is valid in all three.
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
# A subset of `git check-ref-format` plus full or short commit hashes.
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
_SCP_LIKE_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+-]+$")
# A DNS name or IPv4 address: labels of letters, digits, '_' and inner '-'.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_MEM_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

_MEM_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MIN_MEM_BYTES = 64 * 1024**2
MAX_MEM_BYTES = 1024**4
MIN_CPU = 0.05
MAX_CPU = 256.0


class InvalidInput(ValueError):
    """A value from outside that we refuse; the message says why and what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _text(field: str, value, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    value = value.strip()
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidInput(field, f"must be at most {max_length} characters")
    if _CONTROL_RE.search(value):
        raise InvalidInput(field, "must not contain control characters")
    return value


def environment_name(value) -> str:
    """A short name: lowercase letters, digits, '.', '_' and '-'."""
    value = _text("name", value, MAX_NAME_LENGTH)
    if not _NAME_RE.fullmatch(value):
        raise InvalidInput(
            "name",
            "use 1-63 lowercase letters and digits, with single '.', '_' or '-' between them",
        )
    return value


def display_name(value, default: str | None = None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is None:
            raise InvalidInput("display_name", "must not be empty")
        return default
    return _text("display_name", value, MAX_DISPLAY_NAME_LENGTH)


def ref(value) -> str:
    """A branch, tag or commit. Refuses anything git would read as an option."""
    value = _text("ref", value, MAX_REF_LENGTH)
    if (
        not _REF_RE.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith((".", "/", ".lock"))
        or "@{" in value
    ):
        raise InvalidInput(
            "ref", "must be a branch, tag or commit name (letters, digits, '.', '_', '-', '/')"
        )
    return value


def repo_url(value, schemes=DEFAULT_SCHEMES, allow_local: bool = False) -> str:
    """A repository URL with an allowed scheme; local paths only if allowed.

    ``user@host:path`` (scp-like ssh) counts as ``ssh``; local repositories are
    ``file://`` URLs (so that the ref is honoured), accepted only if enabled. Credentials in a URL
    are refused: private repositories take a separate, never-stored token.
    """
    value = _text("repo", value, MAX_REPO_LENGTH)
    if value.startswith("-"):
        raise InvalidInput("repo", "must not start with '-'")
    if any(c.isspace() for c in value):
        raise InvalidInput("repo", "must be a URL without spaces")
    if value.startswith("/"):
        # A plain path would build the working tree whatever the ref says.
        raise InvalidInput("repo", "name a local repository as a file:// URL")
    if _SCP_LIKE_RE.fullmatch(value):
        if "ssh" not in schemes:
            raise InvalidInput("repo", "ssh repositories are not enabled on this hub")
        user, _, rest = value.partition("@")
        _check_host(rest.partition(":")[0], user)
        return value
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not allow_local:
            raise InvalidInput("repo", "local repositories are not enabled on this hub")
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput("repo", "file URLs must name an absolute local path")
        return value
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise InvalidInput("repo", f"must start with one of: {allowed}")
    if not parts.hostname:
        raise InvalidInput("repo", "must name a host")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        raise InvalidInput("repo", "has an invalid port") from None
    _check_host(parts.hostname, parts.username)
    if parts.password is not None or (parts.username and scheme in ("http", "https")):
        raise InvalidInput(
            "repo", "must not contain credentials; use the separate username and token fields"
        )
    return value


def _check_host(host: str, user: str | None):
    """A host (and ssh user) that no program can read as an option.

    git refuses ``-oProxyCommand=...`` hosts itself today; we do not rely on
    every git, ssh and repo2docker version doing so.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _HOST_RE.fullmatch(host) and not _is_ipv6(host):
        raise InvalidInput("repo", "must name a host of letters, digits, '.' and '-'")
    if host.startswith("-") or (user or "").startswith("-"):
        raise InvalidInput("repo", "the host and user must not start with '-'")


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def mem_limit(value) -> int | None:
    """'512M', '2G', '1.5GiB' or a number of bytes -> bytes; empty -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput("mem_limit", "must be a size such as 512M or 2G")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInput("mem_limit", "must be a size such as 512M or 2G")
        size = int(value)
    else:
        match = _MEM_RE.fullmatch(_text("mem_limit", value, 32))
        if not match:
            raise InvalidInput("mem_limit", "must be a size such as 512M or 2G")
        number, unit = match.groups()
        size = int(float(number) * _MEM_UNITS[unit.upper()])
    if not MIN_MEM_BYTES <= size <= MAX_MEM_BYTES:
        raise InvalidInput("mem_limit", "must be between 64M and 1T")
    return size


def disk_size(value, field: str = "size") -> int | None:
    """'50G', '1T' or a number of bytes -> bytes (no upper bound); empty -> None."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEM_RE.fullmatch(_text(field, str(value), 32))
    if not match:
        raise InvalidInput(field, "must be a size such as 50G or 1T")
    number, unit = match.groups()
    return int(float(number) * _MEM_UNITS[unit.upper()])


def cpu_limit(value) -> float | None:
    """A number of CPUs (e.g. 0.5, 2); empty -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput("cpu_limit", "must be a number of CPUs such as 0.5 or 2")
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidInput("cpu_limit", "must be a number of CPUs such as 0.5 or 2") from None
    if not MIN_CPU <= cpus <= MAX_CPU:
        raise InvalidInput("cpu_limit", f"must be between {MIN_CPU} and {MAX_CPU:g}")
    return cpus


_BUILD_ARG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_BUILD_ARGS = 20
MAX_BUILD_ARG_VALUE = 1024


def build_args(value) -> dict[str, str]:
    """Docker build arguments: a mapping NAME -> value, or 'NAME=value' lines."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        pairs = {}
        for line in value.splitlines():
            if not line.strip():
                continue
            name, sep, arg = line.strip().partition("=")
            if not sep:
                raise InvalidInput("build_args", f"write NAME=value, not {line[:40]!r}")
            pairs[name.strip()] = arg
        value = pairs
    if not isinstance(value, dict):
        raise InvalidInput("build_args", "must be an object of NAME: value")
    if len(value) > MAX_BUILD_ARGS:
        raise InvalidInput("build_args", f"at most {MAX_BUILD_ARGS} build arguments")
    out = {}
    for name, arg in value.items():
        if not isinstance(name, str) or not _BUILD_ARG_NAME_RE.fullmatch(name):
            raise InvalidInput("build_args", f"{str(name)[:40]!r} is not a valid name")
        if not isinstance(arg, str):
            raise InvalidInput("build_args", f"the value of {name} must be a string")
        if len(arg) > MAX_BUILD_ARG_VALUE or _CONTROL_RE.search(arg):
            raise InvalidInput("build_args", f"the value of {name} is too long or not text")
        out[name] = arg
    return out


# Docker's grammar for a repository path component, and for the start of
# one (an image prefix may end inside a component, as in "r2d-").
_IMAGE_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_IMAGE_PARTIAL_RE = re.compile(r"(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:[._]|__|-+)?)?")
_REGISTRY_HOST_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
)
MAX_IMAGE_PREFIX_LENGTH = 200  # of Docker's 255 for a whole name


def image_prefix(value) -> str:
    """An image prefix: ``[host[:port]/]path-prefix``, the start of every
    built image's name (``<prefix><environment>:<commit>``).

    The optional first component is a registry host as Docker reads one
    (with a '.' or a port, or ``localhost``); a port is allowed there only.
    Everything is lowercase (Docker refuses uppercase in repository paths,
    and one host has one spelling); no scheme, no credentials, no '..', no
    empty component. Returned unchanged."""
    field = "image_prefix"
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if len(value) > MAX_IMAGE_PREFIX_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_IMAGE_PREFIX_LENGTH} characters")
    if "://" in value:
        raise InvalidInput(field, "must not start with a scheme: write host:port/path/")
    if value != value.lower() or re.search(r"[^a-z0-9._/:-]", value):
        raise InvalidInput(
            field,
            "must be lowercase letters, digits, '.', '_', '-' and '/' (a registry host "
            "may have a ':port'), without spaces, a scheme or credentials",
        )
    components = value.split("/")
    first = components[0]
    if ":" in value:
        host, _, port = first.partition(":")
        if len(components) < 2 or ":" not in first:
            raise InvalidInput(field, "':' may only separate a registry host from its port")
        if not _REGISTRY_HOST_RE.fullmatch(host):
            raise InvalidInput(field, f"{host!r} is not a registry host name")
        if not (port.isdigit() and str(int(port)) == port and 0 < int(port) < 65536):
            raise InvalidInput(field, f"{port!r} is not a port (1-65535)")
        components = components[1:]
    elif len(components) > 1 and ("." in first or first == "localhost"):
        if not _REGISTRY_HOST_RE.fullmatch(first):
            raise InvalidInput(field, f"{first!r} is not a registry host name")
        components = components[1:]
    *whole, last = components
    for component in whole:
        if not _IMAGE_COMPONENT_RE.fullmatch(component):
            raise InvalidInput(
                field,
                f"{component!r} is not a valid image path component "
                "(no '..', no empty component, letters or digits at both ends)",
            )
    if not _IMAGE_PARTIAL_RE.fullmatch(last):
        raise InvalidInput(field, f"{last!r} cannot start an image name")
    return value


def format_bytes(size: int | None) -> str:
    """Bytes -> the shortest exact '2G' / '512M' form, for labels and pages."""
    if size is None:
        return ""
    for unit in ("T", "G", "M", "K"):
        factor = _MEM_UNITS[unit]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
