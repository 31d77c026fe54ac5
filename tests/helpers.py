"""Helpers shared by tests of several folders.

(Not in conftest.py: importing a conftest as a module runs it a second time, and ours
points Airflow at a fresh AIRFLOW_HOME when it runs — the tests' in-process Airflow and
the DB their subprocesses migrate then differ.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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


def use_case_with_approval(root: Path, timeout_hours: float = 2) -> Path:
    """A copy of churn whose promotions need a person's approval (the folder's name is the use case's)."""
    from sluice.core.usecase import load_use_case

    folder = root / "approving" / "churn"
    shutil.copytree(load_use_case("churn").folder, folder)
    spec = folder / "usecase.yaml"
    text = spec.read_text()
    assert "  slice_min_rows: 300\n" in text
    spec.write_text(text.replace(
        "  slice_min_rows: 300\n", f"  slice_min_rows: 300\n  approval: {{required: true, timeout_hours: {timeout_hours}}}\n"))
    return folder


class AirflowApi:
    """Airflow's REST API as one logged-in user (a JWT from /auth/token)."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url
        token = self._call("POST", "/auth/token", {"username": user, "password": password}, token=None)
        self.token = token["access_token"]

    def _call(self, method: str, path: str, body: Any = None, *, token: str | None) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self._call("GET", f"/api/v2{path}", token=self.token)

    def patch(self, path: str, body: Any) -> Any:
        return self._call("PATCH", f"/api/v2{path}", body, token=self.token)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", f"/api/v2{path}", body, token=self.token)


def wait_for(what: str, probe: Callable[[], Any], airflow: Any, timeout: float = 900, poll: float = 5) -> Any:
    """``probe()`` until it returns something true, while the embedded ``airflow`` stays alive."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        airflow.check_alive()
        last = probe()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r}); retried tries:\n"
                         + "\n".join(airflow.retried_tries()))
