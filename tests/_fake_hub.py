"""A local HTTP server on 127.0.0.1 shaped like the Hugging Face hub (``HF_ENDPOINT``) and like a plain download URL,
for testing the real download code offline. Serves bytes from memory; supports HEAD, GET and ``Range`` requests;
logs every request; can cut a plain download short once (to test resume)."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``hub[(repo, path)] = bytes`` (served at /<repo>/resolve/<rev>/<path>); ``plain[name] = bytes`` (served at
    /plain/<name>). ``cut_once[name] = n``: the first GET of plain ``name`` sends only its first n bytes."""

    def __init__(self):
        self.hub: dict[tuple[str, str], bytes] = {}
        self.plain: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self):
                path = self.path.split("?")[0]
                if path.startswith("/plain/"):
                    return path[len("/plain/"):], hub.plain.get(path[len("/plain/"):]), False
                parts = path.lstrip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, file = "/".join(parts[:2]), "/".join(parts[4:])
                    return file, hub.hub.get((repo, file)), True
                return path, None, False

            def _serve(self, send_body: bool):
                hub.log.append((self.command, self.path, self.headers.get("Range")))
                name, data, is_hub = self._body()
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng[6:].split("-")[0]:
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if is_hub:
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if not send_body:
                    return
                cut = hub.cut_once.pop(name, None) if not is_hub else None
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            def do_HEAD(self):
                self._serve(False)

            def do_GET(self):
                self._serve(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
