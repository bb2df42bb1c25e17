"""Child processes that live and die with the process that started them.

Whatever starts emlive processes (``emlive demo``, the benchmarks, the test fixtures) uses :class:`ChildProcesses`
so that no child outlives it, however it ends:

* **Ctrl-C (SIGINT), SIGTERM, SIGHUP** (a closed terminal, a script's ``timeout``): :func:`stop_on_signals` turns
  each into a :class:`StopSignal` exception in the main thread, so the ``with``/``finally`` that owns the children
  runs and :meth:`ChildProcesses.stop` stops them.
* **its own crash** (an exception): the ``with`` block (or, as a last resort, ``atexit``) stops them.
* **killed outright (SIGKILL), Linux**: nothing runs in a killed process, so every child asks the kernel, before it
  starts, to send it ``death_signal`` (SIGTERM by default: emlive's commands shut down cleanly on it) when its
  parent dies: ``prctl(PR_SET_PDEATHSIG)``. Caveat: the kernel sends it when the *thread* that started the child
  ends, not the process; start children from the main thread (or a thread that lives as long as the process),
  never from a short-lived worker thread, or they receive the signal as soon as that thread returns. The kernel
  signals the direct children only: a child that starts processes of its own must start them with this helper too
  (emlive's commands start threads only). Children started by ``multiprocessing`` call :func:`die_with_parent`.
  The request is made between fork and exec (``preexec_fn``) with ``prctl`` looked up beforehand, so the child
  takes no lock there (``preexec_fn`` and a parent's threads otherwise do not mix).

Each child runs in its own session and process group (``start_new_session``): a terminal's Ctrl-C or hangup reaches
only the parent, which stops its children in order, and :meth:`ChildProcesses.stop` signals the whole group, so
the child's own children (a browser's helpers, worker processes) stop with it. Stopping is polite: ``stop_signal``
(SIGTERM) to the group, ``grace_s`` seconds to exit, then SIGKILL to whatever of the group remains.
A child that exits on its own is reported by :meth:`ChildProcesses.check` (name, exit code or signal).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from emlive.core.errors import EmliveError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignal(BaseException):
    """Raised in the main thread by :func:`stop_on_signals` when one of its signals arrives.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` does not swallow the request."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"{self.name} received")


class ChildExitedError(EmliveError):
    """A supervised child process exited while it was meant to run."""

    def __init__(self, owner: str, name: str, returncode: int) -> None:
        self.name, self.returncode = name, returncode
        super().__init__(
            f"the {owner}'s {name} stopped unexpectedly ({describe_exit(returncode)}; its log is above): "
            f"the {owner} stopped the other processes"
        )


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` for a ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class SignalGuard:
    """What :func:`stop_on_signals` yields: call :meth:`stopping` when the clean-up begins, so that a later signal
    does not interrupt it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.is_stopping = False

    def stopping(self) -> None:
        self.is_stopping = True


@contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[SignalGuard]:
    """Within the block, the first of ``signals`` to arrive raises :class:`StopSignal` in the main thread; later
    ones (and any after :meth:`SignalGuard.stopping`) are logged and ignored, so the clean-up is not interrupted.
    The previous handlers come back when the block ends. Must be entered from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("stop_on_signals() must run in the main thread: Python delivers signals only there")
    guard = SignalGuard()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if guard.is_stopping:
            log.warning("%s received while stopping: still stopping", signal.Signals(signum).name)
            return
        guard.signum = signum
        guard.is_stopping = True
        raise StopSignal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield guard
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@functools.cache
def _prctl() -> Any:
    return ctypes.CDLL(None, use_errno=True).prctl  # libc is in the process's own namespace (no ldconfig run)


def die_with_parent(parent: int, death_signal: int = signal.SIGTERM) -> None:
    """In a child process (Linux): ask the kernel for ``death_signal`` when the parent's thread that started it
    ends, and exit at once if ``parent`` (its pid) is already gone. For children that :class:`ChildProcesses` does
    not start, e.g. ``multiprocessing`` workers: call it first thing in the target, with the parent's pid."""
    if not sys.platform.startswith("linux"):
        return
    _prctl()(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _parent_death_hook(death_signal: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes a child receive ``death_signal`` when its parent dies (Linux), or None.

    libc's ``prctl`` is looked up here, in the parent: the hook (run in the child between fork and exec) only
    makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    _prctl()
    parent = os.getpid()
    return lambda: die_with_parent(parent, death_signal)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[Any]

    @property
    def pid(self) -> int:
        return self.popen.pid


class ChildProcesses:
    """The child processes of one owner (``emlive demo``, a benchmark, a test), stopped together.

    Use as a context manager (``with ChildProcesses("demo") as children: children.start(...)``); the children are
    stopped when the block ends, however it ends, and by ``atexit`` if the block never ends normally. See the module
    docstring for how each way of ending is covered.
    """

    def __init__(
        self,
        owner: str,
        grace_s: float = 10.0,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.owner = owner
        self.grace_s = grace_s
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self.children: list[Child] = []
        self._atexit_registered = False

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {child.name: child.pid for child in self.children}

    def start(self, name: str, cmd: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` as the child ``name`` (in its own session, told to die with this process); the keyword
        arguments go to :class:`subprocess.Popen` (``stdout``, ``stderr``, ``env``, ``text`` ...)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "starting the %s's %s from thread %s: it is sent %s when that thread ends (PR_SET_PDEATHSIG); "
                "start children from the main thread",
                self.owner,
                name,
                threading.current_thread().name,
                signal.Signals(self.death_signal).name,
            )
        popen = subprocess.Popen(
            list(cmd), start_new_session=True, preexec_fn=_parent_death_hook(self.death_signal), **popen_kwargs
        )
        self.children.append(Child(name, popen))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        log.info("the %s's %s started: pid %d (its own process group)", self.owner, name, popen.pid)
        return popen

    def check(self) -> None:
        """Raise :class:`ChildExitedError` for the first child that has exited."""
        for child in self.children:
            code = child.popen.poll()
            if code is not None:
                raise ChildExitedError(self.owner, child.name, code)

    def wait(self, duration: float | None = None, interval: float = 0.2) -> None:
        """Block until ``duration`` seconds pass (forever if None); raises :class:`ChildExitedError` as soon as a
        child exits."""
        deadline = None if duration is None else time.monotonic() + duration
        while deadline is None or time.monotonic() < deadline:
            self.check()
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
        self.check()

    def stop(self) -> None:
        """Stop every child, the last started first: ``stop_signal`` to its process group, ``grace_s`` seconds
        (for all of them together), then SIGKILL to what remains of each group. Safe to call more than once."""
        for child in reversed(self.children):
            if child.popen.poll() is None:
                _signal_group(child.pid, self.stop_signal)
        deadline = time.monotonic() + self.grace_s
        while self.children:  # a child leaves the list once reaped: an interrupted stop() leaves the rest to atexit
            self._reap(self.children[-1], deadline)
            self.children.pop()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def _reap(self, child: Child, deadline: float) -> None:
        try:
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the %s's %s did not stop within %g s: killing it", self.owner, child.name, self.grace_s)
        _signal_group(child.pid, signal.SIGKILL)  # its own children, if any outlived it; the child if still running
        child.popen.wait()
        for stream in (child.popen.stdin, child.popen.stdout, child.popen.stderr):
            if stream is not None:
                stream.close()
        log.debug("the %s's %s stopped (%s)", self.owner, child.name, describe_exit(child.popen.returncode))


def _signal_group(pgid: int, signum: int) -> None:
    """``killpg`` that ignores a group with no process left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pid reuse by a process of another user: never ours
        log.warning("cannot signal process group %d (%s): it is no longer ours", pgid, exc)


# --- what is running (Linux /proc): used to check that nothing outlived its owner ----------------------------------
@dataclass(frozen=True)
class ProcessInfo:
    """One process as ``/proc/PID/stat`` shows it; ``start_ticks`` tells a process from a later one with its pid."""

    pid: int
    state: str
    pgid: int
    start_ticks: int

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has exited, it only waits for its parent to read its status


def process_info(pid: int) -> ProcessInfo | None:
    """The process ``pid`` from ``/proc`` (None when there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces and parentheses
    return ProcessInfo(pid, fields[0], int(fields[2]), int(fields[19]))


def descendants(pid: int) -> list[ProcessInfo]:
    """The running children of ``pid``, their children and so on (``/proc/PID/task/*/children``)."""
    found: list[ProcessInfo] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in map(int, children):
                info = process_info(child)
                if info is not None and info.running:
                    found.append(info)
                    todo.append(child)
    return found


def survivors(processes: Sequence[ProcessInfo], pgids: Sequence[int] = ()) -> list[ProcessInfo]:
    """Those of ``processes`` still running (same pid and start time) and any running process in ``pgids``."""
    alive = [
        p
        for p in processes
        if (now := process_info(p.pid)) is not None and now.running and now.start_ticks == p.start_ticks
    ]
    seen = {p.pid for p in alive}
    for entry in Path("/proc").glob("[0-9]*"):
        info = process_info(int(entry.name))
        if info is not None and info.running and info.pgid in pgids and info.pid not in seen:
            alive.append(info)
    return alive


def wait_until_gone(processes: Sequence[ProcessInfo], timeout: float, pgids: Sequence[int] = ()) -> list[ProcessInfo]:
    """Poll until none of ``processes`` (nor any process of ``pgids``) runs, at most ``timeout`` seconds; returns
    those still running then (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while (alive := survivors(processes, pgids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive
