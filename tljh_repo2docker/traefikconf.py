"""Let TLJH's Traefik pass encoded slashes (``%2F``) to the hub.

Traefik 3.6 answers a bare 400 to any path with ``%2F`` unless the entry
point allows it, and Binder's launch links carry them by design
(``v2/git/https%3A%2F%2F...``, ``v2/gl/group%2Fproject``). TLJH renders
``state/traefik.toml`` from its template plus ``config/traefik_config.d``;
a TOML file there cannot know whether https is on (adding settings to an
``https`` entry point that TLJH did not define creates a listener with no
address). So the plugin patches the rendered file just before Traefik starts
(a systemd drop-in runs ``python -m tljh_repo2docker.traefikconf FILE``):
whatever entry points TLJH rendered, after ``tljh-config reload proxy`` or an
upgrade, get ``allowEncodedSlash``. Only encoded slashes: the other encoded
characters Traefik rejects stay rejected.

``allow_encoded_slash`` is pure; ``main`` reads and writes the file.
"""

from __future__ import annotations

import os
import sys

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover (Python 3.10: TLJH's hub env has toml)
    tomllib = None

# Entry points that carry user traffic; TLJH's auth_api is Traefik's own API.
SKIP_ENTRYPOINTS = {"auth_api"}


def _loads(text: str) -> dict:
    if tomllib is not None:
        return tomllib.loads(text)
    import toml

    return toml.loads(text)


def entrypoints_to_patch(config: dict) -> list[str]:
    """Names of entry points with an address that do not allow ``%2F`` yet."""
    names = []
    for name, entry in (config.get("entryPoints") or {}).items():
        if name in SKIP_ENTRYPOINTS or not isinstance(entry, dict) or not entry.get("address"):
            continue
        http = entry.get("http") if isinstance(entry.get("http"), dict) else {}
        encoded = http.get("encodedCharacters") if isinstance(http, dict) else None
        if not (isinstance(encoded, dict) and encoded.get("allowEncodedSlash") is True):
            names.append(name)
    return names


def allow_encoded_slash(text: str) -> str:
    """``text`` (a traefik.toml) with ``allowEncodedSlash = true`` on every
    user-facing entry point. Unchanged when nothing needs it."""
    config = _loads(text)
    names = entrypoints_to_patch(config)
    if not names:
        return text
    blocks = []
    for name in names:
        encoded = config["entryPoints"][name].get("http", {}).get("encodedCharacters")
        if encoded is not None:
            # the table exists (an admin's traefik_config.d file): TOML cannot
            # define it twice, so the whole file is written again
            return _rewrite(config, names)
        blocks.append(
            f"\n# added by tljh-repo2docker: launch links carry %2F\n"
            f'[entryPoints."{name}".http.encodedCharacters]\nallowEncodedSlash = true\n'
        )
    patched = text.rstrip("\n") + "\n" + "".join(blocks)
    try:
        _loads(patched)  # never hand Traefik a file it cannot read
    except ValueError:  # e.g. an inline table cannot take a sub-table
        return _rewrite(config, names)
    return patched


def _rewrite(config: dict, names: list[str]) -> str:
    import toml  # TLJH's hub environment has it (TLJH writes this file with it)

    for name in names:
        http = config["entryPoints"][name].setdefault("http", {})
        http.setdefault("encodedCharacters", {})["allowEncodedSlash"] = True
    return toml.dumps(config)


def patch_file(path: str) -> bool:
    """Patch ``path`` in place (same mode); True when it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    patched = allow_encoded_slash(text)
    if patched == text:
        return False
    mode = os.stat(path).st_mode & 0o777
    tmp = f"{path}.tljh-repo2docker.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(patched)
    os.replace(tmp, path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tljh_repo2docker.traefikconf TRAEFIK_TOML", file=sys.stderr)
        return 2
    try:
        changed = patch_file(args[0])
    except FileNotFoundError:
        # Traefik will fail on its own with a clearer message; never block it
        print(f"tljh-repo2docker: {args[0]} not found, not patched", file=sys.stderr)
        return 0
    except Exception as e:  # a broken patch must not keep the proxy down
        print(f"tljh-repo2docker: could not patch {args[0]}: {e}", file=sys.stderr)
        return 0
    if changed:
        print(f"tljh-repo2docker: {args[0]}: entry points now accept %2F in paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
