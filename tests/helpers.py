"""Helpers shared by tests of several folders.

(Not in conftest.py: importing a conftest as a module runs it a second time, and ours
points Airflow at a fresh AIRFLOW_HOME when it runs — the tests' in-process Airflow and
the DB their subprocesses migrate then differ.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def webhook_server(path: str = "/hooks/sluice") -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """A real HTTP endpoint on 127.0.0.1 for the alert connection: answers 200 and keeps every
    (path, JSON body) POSTed. Yields (its URL ending in ``path``, the list)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", received
    finally:
        server.shutdown()
        server.server_close()
