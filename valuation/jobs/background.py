"""Background jobs: a long command (`python -m valuation <argv>`) run as its own OS process, so it
survives page reloads and a closed browser, with its state kept in the run directory.

    <run>/job.lock           held (flock) by the one process working on the run; the kernel releases
                             it when that process ends, however it ends (even SIGKILL or OOM)
    <run>/job/job.json       what runs: kind, argv, pid, start time, whether it has its own process group
    <run>/job/result.json    how it ended: state (done, failed, cancelled), end time, error message
    <run>/job/progress.jsonl its progress events (valuation.progress), appended as they happen
    <run>/job/log.txt        its stdout and stderr (a terminal run: the lines it logs)

The state is derived from these files and the lock, never stored as "running": result.json says
how a job ended; without it, a held lock means queued (no progress event yet) or running, and a
free lock means the process died before it could write its result, which reads as failed.

One job per run: `launch_job` takes the lock and hands it to the child (an inherited file
descriptor), so there is no moment when the run looks free; a command started from a terminal
takes the same lock through `job_session`, so it is refused while a job is active and vice versa.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from ..config import PROJECT_ROOT
from ..errors import UserError
from ..progress import Reporter, read_progress
from ..runs import Run
from ..storage import atomic_write_json

LOCK_FD_ENV = "VALUATION_JOB_LOCK_FD"  # the lock's file descriptor, inherited by a launched job
ACTIVE_STATES = ("queued", "running")
CANCEL_GRACE_S = 10.0  # after SIGTERM, how long a job may take to stop before SIGKILL


class JobBusyError(UserError):
    """Another job is working on this run."""


@dataclass
class Job:
    kind: str  # "train", later "evaluate", ...
    argv: list[str]  # the arguments after `python -m valuation`
    pid: int
    started: float
    own_group: bool  # launched in its own session: cancel kills its whole process group


@dataclass
class JobStatus:
    kind: str
    state: str  # queued, running, done, failed or cancelled
    pid: int
    started: float
    finished: float | None
    events: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def job_dir(run: Run) -> Path:
    return run.path / "job"


def _lock_path(run: Run) -> Path:
    return run.path / "job.lock"


def _try_lock(run: Run) -> IO | None:
    """The run's lock, opened and held, or None when another process holds it."""
    run.path.mkdir(parents=True, exist_ok=True)
    handle = _lock_path(run).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def is_locked(run: Run) -> bool:
    handle = _try_lock(run)
    if handle is None:
        return True
    handle.close()
    return False


def _take_lock(run: Run) -> IO:
    handle = _try_lock(run)
    if handle is None:
        status = job_status(run)
        what = f"a {status.kind} job (pid {status.pid}, {status.state})" if status else "another process"
        raise JobBusyError(
            f"Run {run.name!r} is busy: {what} is working on it. Wait for it to finish or cancel it first."
        )
    return handle


def _clear_job_dir(run: Run) -> Path:
    """Forget the previous job's files (call only while holding the lock)."""
    folder = job_dir(run)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _record_job(run: Run, job: Job) -> None:
    atomic_write_json(job_dir(run) / "job.json", asdict(job))


def launch_job(run: Run, kind: str, argv: list[str]) -> Job:
    """Start `python -m valuation <argv>` in the background, in its own session; refuse if busy."""
    lock = _take_lock(run)
    try:
        with (_clear_job_dir(run) / "log.txt").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "valuation", *argv],
                cwd=PROJECT_ROOT,
                env={**os.environ, LOCK_FD_ENV: str(lock.fileno()), "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a page reload cannot touch it, cancel can
                pass_fds=(lock.fileno(),),  # the child holds the lock from its first instant
            )
        job = Job(kind, argv, process.pid, time.time(), own_group=True)
        _record_job(run, job)
        return job
    finally:
        lock.close()  # the child's inherited copy keeps the lock held


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_job(run: Run) -> Job | None:
    values = _read_json(job_dir(run) / "job.json")
    return Job(**values) if values else None


def log_tail(run: Run, lines: int = 40) -> str:
    """The last `lines` lines of the job's log; a progress bar's redraws (\\r) keep their last state."""
    path = job_dir(run) / "log.txt"
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64_000))
        text = handle.read().decode("utf-8", errors="replace")
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


def job_status(run: Run, log_lines: int = 40) -> JobStatus | None:
    """The run's current or last job, or None if it never had one."""
    job = read_job(run)
    if job is None:
        return None
    folder = job_dir(run)
    # The lock before the result: a job records its result before it lets go of the lock, so once a
    # free lock is seen, whatever result it recorded is there to read. (The other way round, a job
    # ending between the two reads looked as if it had died without a result.)
    locked = is_locked(run)
    result = _read_json(folder / "result.json")
    events = read_progress(folder / "progress.jsonl")
    if result:
        state, finished, error = result["state"], result["finished"], result.get("error")
    elif locked:
        state, finished, error = ("running" if events else "queued"), None, None
    else:
        state, finished, error = "failed", None, "The process ended without recording a result (killed, out of memory, or it could not start: see the log)."
    return JobStatus(job.kind, state, job.pid, job.started, finished, events, log_tail(run, log_lines), error)


def _finish(run: Run, state: str, error: str | None = None) -> None:
    atomic_write_json(job_dir(run) / "result.json", {"state": state, "finished": time.time(), "error": error})


def cancel_job(run: Run, grace_s: float = CANCEL_GRACE_S) -> bool:
    """Stop the run's active job (its whole process group); False if none was active."""
    status = job_status(run)
    job = read_job(run)
    if status is None or job is None or not status.active or job.pid <= 0:
        return False
    kill = (lambda sig: os.killpg(job.pid, sig)) if job.own_group else (lambda sig: os.kill(job.pid, sig))
    try:
        kill(signal.SIGTERM)  # the job records "cancelled" and cleans up its temporary files
        deadline = time.monotonic() + grace_s
        while is_locked(run) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_locked(run):
            kill(signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own meanwhile
    if _read_json(job_dir(run) / "result.json") is None:
        _finish(run, "cancelled", "Cancelled; the process was killed before it could record it.")
    return True


def wait_for_job(run: Run, timeout_s: float, poll_s: float = 0.2) -> JobStatus | None:
    """Poll until the run's job is no longer active (or the timeout passes); its last status."""
    deadline = time.monotonic() + timeout_s
    status = job_status(run)
    while status is not None and status.active and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = job_status(run)
    return status


def _inherited_lock(run: Run) -> IO | None:
    """The lock handed down by `launch_job`, if this process is that job (checked, not trusted)."""
    fd = os.environ.pop(LOCK_FD_ENV, None)
    if fd is None:
        return None
    try:
        handle = os.fdopen(int(fd), "a")
    except (OSError, ValueError):
        return None
    if os.fstat(handle.fileno()).st_ino != _lock_path(run).stat().st_ino:
        handle.close()
        return None
    return handle


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def job_session(run: Run, kind: str) -> Iterator[Reporter]:
    """Hold the run's lock for the block and record how it ends (done, failed or cancelled).

    A job started by `launch_job` adopts the lock it inherited; a command typed in a terminal takes
    the lock itself (refused with JobBusyError while another job is active) and records itself.
    The block reports through the yielded `Reporter`.
    SIGTERM (what cancel sends) ends the block like Ctrl-C: as cancelled.
    """
    lock = _inherited_lock(run)
    launched = lock is not None
    if lock is None:
        lock = _take_lock(run)
        _clear_job_dir(run)
        _record_job(run, Job(kind, sys.argv[1:], os.getpid(), time.time(), own_group=False))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # A launched job's stdout already goes to log.txt; a terminal's lines are copied there.
    reporter = Reporter(job_dir(run) / "progress.jsonl", None if launched else job_dir(run) / "log.txt")
    try:
        yield reporter
    except KeyboardInterrupt:
        _finish(run, "cancelled", "Cancelled.")
        raise
    except UserError as error:
        _finish(run, "failed", str(error))
        raise
    except BaseException as error:
        _finish(run, "failed", "".join(traceback.format_exception_only(error)).strip())
        raise
    else:
        _finish(run, "done")
    finally:
        reporter.close()
        signal.signal(signal.SIGTERM, previous)
        lock.close()
