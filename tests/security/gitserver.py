"""A real git smart-HTTP server for the hostile-user tests: ``git http-backend``
behind Python's HTTP server, on an address of this machine. It records every
request, so a test can prove that nothing reached it."""

from __future__ import annotations

import http.server
import subprocess
import threading
from pathlib import Path


def make_repo(root: Path, name: str, files: dict[str, str]) -> str:
    """A bare repository ``<root>/<name>.git`` with one commit of ``files``;
    returns the commit."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)

    def git(*args, cwd=work):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "files")
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
    git("config", "uploadpack.allowFilter", "true", cwd=bare)
    git("config", "http.receivepack", "false", cwd=bare)
    return git("rev-parse", "HEAD")


class GitServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", redirect_to: str | None = None):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.serve()

            def do_POST(self):  # noqa: N802
                self.serve()

            def serve(self):
                server.requests.append(f"{self.command} {self.path}")
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to + self.path)
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "PATH": "/usr/bin:/bin",
                }
                out = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode(errors="replace").split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{name}.git"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
