"""`sluice serve` stopped by a signal stops every Airflow component it started.

The components run in their own sessions (a Ctrl-C in the terminal reaches only `sluice
serve`, which stops them in order). A process manager or `kill` sends SIGTERM (a closed
terminal SIGHUP) to `sluice serve` alone: it must stop the API server, scheduler and DAG
processor too, and everything they started, and free the port, as it does for a Ctrl-C.

The first tests check LocalAirflow's handlers on stand-in processes (fast, no Airflow); the
last one runs `sluice serve` itself (e2e).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sluice.ops.embedded import COMPONENTS, PROJECT_ROOT, STOP_SIGNALS, Interrupted, LocalAirflow, free_port

pytestmark = [pytest.mark.timeout(900)]


@pytest.fixture
def recorded_signals():
    """SIGTERM and SIGHUP recorded instead of acted on while a test runs (a handler that fails to
    catch one then fails the test, instead of killing pytest); the originals restored after."""
    got: list[int] = []
    originals = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in STOP_SIGNALS}
    try:
        yield got
    finally:
        for signum, handler in originals.items():
            signal.signal(signum, handler)


def _session(script: str) -> subprocess.Popen:
    """A stand-in component: a session leader with a child of its own, like an Airflow component."""
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def _tree(proc: subprocess.Popen, size: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        if len(tree) >= size:
            return tree
        time.sleep(0.05)
    raise AssertionError(f"pid {proc.pid} did not start its children")


def _gone(tree: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(tree, timeout=5)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive if p.is_running())


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_raises_interrupted_a_keyboard_interrupt(tmp_path: Path, recorded_signals, signum) -> None:
    airflow = LocalAirflow(home=tmp_path)
    airflow.processes["scheduler"] = _session("sleep 300 & wait")
    tree = _tree(airflow.processes["scheduler"], 2)
    airflow._install_signal_handlers()  # what start() does first
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs in this thread, between two bytecodes
        assert isinstance(raised.value, Interrupted) and raised.value.signum == signum
    finally:
        airflow.stop()
    assert _gone(tree) and airflow.processes == {}
    assert recorded_signals == [], "the handler, not the earlier one, got the signal"
    os.kill(os.getpid(), signum)  # stop() put the earlier handler back
    time.sleep(0.5)
    assert recorded_signals == [signum]


def test_stop_is_not_cut_short_by_a_second_signal_and_reaches_orphans(tmp_path: Path, recorded_signals) -> None:
    airflow = LocalAirflow(home=tmp_path)
    airflow._install_signal_handlers()
    # Takes 2 s to stop after SIGTERM, and has a grandchild in a session of its own (a process that
    # left the group): SIGTERM to the group does not reach it, terminate() must.
    airflow.processes["api-server"] = _session("trap 'sleep 2; exit 0' TERM; setsid sleep 300 & sleep 300 & wait")
    tree = _tree(airflow.processes["api-server"], 3)
    again = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    again.start()
    airflow.stop()  # the SIGTERM meanwhile is ignored: no Interrupted from here
    again.join()
    assert _gone(tree), [p.cmdline() for p in tree if p.is_running()]
    assert recorded_signals == [], "the second SIGTERM was ignored, not passed on"




@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project of its own (its .airflow and .lake are not the demo's), with the real DAGs and plugins."""
    root = tmp_path_factory.mktemp("serve")
    for name in ("dags", "plugins", "airflow_settings.yaml"):
        (root / name).symlink_to(PROJECT_ROOT / name)
    return root


def _serve(project: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "AIRFLOW"))}
    env |= {"SLUICE_USE_CASES": "churn", "SLUICE_LAKE_URI": (project / ".lake").as_uri(),
            "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sluice.ops.cli", "serve", "--project", str(project), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # like a process manager's child: only `kill <pid>` reaches it
    )


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    """Read the output until a line holds ``text`` (the serve loop prints the UI's URL once healthy)."""
    import selectors

    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=1):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                if text in line:
                    return lines
            elif proc.poll() is not None:
                break
    raise AssertionError(f"`sluice serve` never printed {text!r} (exit {proc.poll()}):\n" + "\n".join(lines[-40:]))


def _port_is_free(port: int) -> bool:
    """Nobody listens on the port (SO_REUSEADDR: the TIME_WAIT of closed connections does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def _listeners(port: int) -> list[str]:
    out = []
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            try:
                out.append(f"pid {conn.pid}: {' '.join(psutil.Process(conn.pid).cmdline())[:200]}")
            except (psutil.Error, TypeError, ValueError):
                out.append(f"pid {conn.pid}")
    return out


@pytest.mark.e2e
def test_sigterm_stops_every_component_and_frees_the_port(project: Path) -> None:
    """SIGTERM, as a process manager or `kill` sends it (SIGHUP takes the same way: the tests above)."""
    signum = signal.SIGTERM
    port = free_port()
    serve = _serve(project, port)
    tree: list[psutil.Process] = []
    started = time.monotonic()
    try:
        _wait_for_line(serve, "Airflow UI:", timeout=600)
        print(f"healthy after {time.monotonic() - started:.0f}s")
        tree = psutil.Process(serve.pid).children(recursive=True)
        # The components are the children of `sluice serve` (their titles are Airflow's own: no names).
        components = json.loads((project / ".airflow" / "pids.json").read_text())
        assert sorted(components) == sorted(COMPONENTS)
        children = {p.pid for p in psutil.Process(serve.pid).children()}
        assert set(components.values()) == children, (components, children)
        assert len(tree) > len(children), "the components have started processes of their own"
        assert not _port_is_free(port), "the API server listens"

        signalled = time.monotonic()
        serve.send_signal(signum)
        out, _ = serve.communicate(timeout=180)
        print(f"exited {time.monotonic() - signalled:.0f}s after {signum.name}")
        assert serve.returncode == 0, f"`sluice serve` exited {serve.returncode}:\n{out[-4000:]}"

        _gone, alive = psutil.wait_procs(tree, timeout=5)
        left = []
        for proc in alive:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            except psutil.NoSuchProcess:
                pass
        assert not left, "left running after `sluice serve` exited:\n" + "\n".join(left)
        assert _port_is_free(port), f"port {port} still taken: {_listeners(port)}"
    finally:
        # A failed test must not leave them running either: stop what was recorded (psutil
        # checks each one's start time, so a recycled pid is left alone).
        if serve.poll() is None:
            serve.kill()
        serve.wait()
        for proc in tree:
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
