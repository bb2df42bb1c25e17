"""Supervised child processes (emlive.core.processes): no child or grandchild outlives its owner, however the owner
ends. Real processes: a small supervisor script starts two children (Python) that each start a grandchild (sleep);
the test ends the supervisor one way, then polls /proc for every process it started (bounded wait)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emlive.core.processes import (
    ChildExitedError,
    ChildProcesses,
    ProcessInfo,
    StopSignal,
    descendants,
    describe_exit,
    process_info,
    stop_on_signals,
    survivors,
    wait_until_gone,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux only"),
]

# A child: starts a grandchild (`sleep`), either plainly (same process group) or supervised itself ("nested"),
# prints its pid and sleeps. SIGTERM's default action ends it.
CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from emlive.core.processes import ChildProcesses, stop_on_signals
    sleeper = ["sleep", "120"]
    if sys.argv[1] == "nested":
        with stop_on_signals(), ChildProcesses("child", grace_s=2) as kids:
            print(kids.start("grandchild", sleeper).pid, flush=True)
            time.sleep(120)
    else:
        print(subprocess.Popen(sleeper).pid, flush=True)
        time.sleep(120)
    """
)

# The supervisor: two children, then prints the pids and runs until killed, or raises ("crash").
SUPERVISOR = textwrap.dedent(
    """
    import json, logging, subprocess, sys, time
    from emlive.core.processes import ChildProcesses, stop_on_signals
    logging.basicConfig(level=logging.INFO)
    child, grandchild, how = sys.argv[1], sys.argv[2], sys.argv[3]
    with stop_on_signals(), ChildProcesses("supervisor", grace_s=3) as children:
        for name in ("a", "b"):
            proc = children.start(name, [sys.executable, "-c", child, grandchild], stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
        print(json.dumps(children.pids), flush=True)
        if how == "crash":
            time.sleep(0.5)
            raise RuntimeError("the supervisor crashes")
        time.sleep(120)
    """
)


def _start_supervisor(tmp_path: Path, grandchild: str, how: str) -> tuple[subprocess.Popen[str], list[ProcessInfo]]:
    log = (tmp_path / "supervisor.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, CHILD, grandchild, how],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # the test's signal reaches the supervisor only, never its children directly
    )
    log.close()
    assert proc.stdout is not None
    pids = json.loads(proc.stdout.readline() or "{}")
    assert set(pids) == {"a", "b"}, (tmp_path / "supervisor.log").read_text()
    started = descendants(proc.pid)
    assert len(started) == 4, f"two children and two grandchildren, found {started}"
    return proc, started


def _assert_none_survive(started: list[ProcessInfo], timeout: float = 10.0) -> None:
    alive = wait_until_gone(started, timeout, pgids=sorted({p.pgid for p in started}))
    for p in alive:  # do not leave them behind for the next test
        os.kill(p.pid, signal.SIGKILL)
    assert not alive, f"still running {timeout:g} s after their owner ended: {alive}"


def _finish(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL", "crash"])
def test_no_child_or_grandchild_outlives_the_supervisor(tmp_path: Path, how: str) -> None:
    proc, started = _start_supervisor(tmp_path, "nested", how)
    if how != "crash":
        os.kill(proc.pid, signal.Signals[how])
    _finish(proc)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 1, "a signal or a crash ends the supervisor's block with an exception"
        assert ("StopSignal" if how != "crash" else "the supervisor crashes") in (
            tmp_path / "supervisor.log"
        ).read_text()
    _assert_none_survive(started)


def test_the_group_kill_reaches_a_childs_own_children(tmp_path: Path) -> None:
    """Grandchildren started without the helper (in their parent's process group) stop with the group."""
    proc, started = _start_supervisor(tmp_path, "plain", "wait")
    os.kill(proc.pid, signal.SIGTERM)
    _finish(proc)
    _assert_none_survive(started)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(60)"
    )
    children = ChildProcesses("test", grace_s=0.5)
    proc = children.start("stubborn", [sys.executable, "-c", stubborn], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ok\n"
    info = process_info(proc.pid)
    assert info is not None
    t0 = time.monotonic()
    children.stop()
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 5
    assert not survivors([info]) and children.children == []


def test_a_child_that_exits_is_named_with_its_exit_code() -> None:
    with ChildProcesses("test", grace_s=2) as children:
        sleeper = children.start("sleeper", ["sleep", "30"])
        children.start("failing", [sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(ChildExitedError, match=r"the test's failing stopped unexpectedly \(exit code 3"):
            children.wait(10, interval=0.05)
    assert sleeper.returncode == -signal.SIGTERM, "stopping the owner stopped the other child"


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exit code 0" and describe_exit(-9) == "killed by SIGKILL"


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the handler runs before this returns


def test_a_signal_becomes_stop_signal_once_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as guard, pytest.raises(StopSignal, match="SIGTERM received"):
        _signal_self(signal.SIGTERM)
    assert guard.signum == signal.SIGTERM and guard.is_stopping
    assert signal.getsignal(signal.SIGTERM) is before
    with stop_on_signals() as guard:
        guard.stopping()
        _signal_self(signal.SIGHUP)  # ignored: the clean-up has begun
    assert guard.signum is None


MP_SUPERVISOR = textwrap.dedent(
    """
    import multiprocessing, os, time
    from emlive.core.processes import die_with_parent

    def worker(parent):
        die_with_parent(parent)
        print("ready", flush=True)
        time.sleep(120)

    if __name__ == "__main__":
        proc = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(),))
        proc.start()
        print(proc.pid, flush=True)
        time.sleep(120)
    """
)


def test_a_multiprocessing_worker_dies_with_its_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "mp_supervisor.py"
    script.write_text(MP_SUPERVISOR)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    worker = process_info(int(proc.stdout.readline()))
    assert worker is not None and worker.running
    assert proc.stdout.readline() == "ready\n"  # its die_with_parent() has run: the kernel will signal it
    os.kill(proc.pid, signal.SIGKILL)
    _finish(proc)
    _assert_none_survive([worker])
