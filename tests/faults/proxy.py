"""A TCP proxy for fault experiments: in front of a real server, it forwards, refuses or hangs.

    with FaultProxy("127.0.0.1", 5432) as proxy:       # listens on proxy.port
        proxy.refuse()     # outage: connections refused, open ones cut
        proxy.blackhole()  # a server that accepts and never answers
        proxy.forward()    # back to normal

Runs in threads of the test process; no external tool.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Literal

from sluice.ops.embedded import free_port

Mode = Literal["forward", "refuse", "blackhole"]


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "forward"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self.port = port or free_port()
        self.accepted = 0
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------
    def forward(self) -> None:
        with self._lock:
            self.mode = "forward"
            self._listen()

    def refuse(self) -> None:
        """Connection refused from now on, and every open connection cut (the server is gone)."""
        with self._lock:
            self.mode = "refuse"
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._cut_all()

    def blackhole(self) -> None:
        """Accept connections and never answer (open connections stall too)."""
        with self._lock:
            self.mode = "blackhole"
            self._listen()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._cut_all()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- internals -------------------------------------------------------------------
    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger a moment after a refuse()
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise OSError(f"proxy port {self.port} stays busy")
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener

    def _cut_all(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.accepted += 1
                mode = self.mode
                self._conns.append(client)
            if mode == "forward":
                threading.Thread(target=self._pipe, args=(client,), daemon=True).start()
            # blackhole: keep the socket open, read nothing, answer nothing

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        with self._lock:
            self._conns.append(upstream)
        pair = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                if self.mode == "blackhole":  # stall the open connection too
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):  # cut by refuse() or close()
            return
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
