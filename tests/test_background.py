"""Background-job machinery: states from files and the lock, the lock itself, cancel, and death."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from valuation import cli
from valuation.config import PROJECT_ROOT
from valuation.errors import UserError
from valuation.jobs.background import (JobBusyError, cancel_job, job_dir, job_session, job_status, launch_job, log_tail, read_job,
                            wait_for_job)
from valuation.runs import Run, create_run

# A stand-in for a command typed in a terminal: it takes the run's lock, reports, then waits.
HOLDER = """
import sys, time
from valuation.jobs.background import job_session
from valuation.runs import Run
with job_session(Run.at(sys.argv[1]), "hold") as reporter:
    reporter.log("holding the lock")
    reporter.event("step", step=1)
    time.sleep(120)
"""


@pytest.fixture
def run(runs_dir) -> Run:
    return create_run("jobs", root=runs_dir)


def start_holder(run: Run) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.path)], cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 60
    while (status := job_status(run)) is None or status.state != "running":
        assert time.monotonic() < deadline and process.poll() is None, "the holder never started"
        time.sleep(0.1)
    return process


def test_session_records_how_it_ends(run: Run) -> None:
    assert job_status(run) is None
    with job_session(run, "demo") as reporter:
        reporter.event("step", step=1)
        assert job_status(run).state == "running"
    assert job_status(run).state == "done"

    with pytest.raises(UserError), job_session(run, "demo"):
        raise UserError("no data for that source")
    status = job_status(run)
    assert (status.state, status.error) == ("failed", "no data for that source")

    with pytest.raises(KeyboardInterrupt), job_session(run, "demo"):
        raise KeyboardInterrupt
    assert job_status(run).state == "cancelled"


def test_lock_refuses_a_second_job_from_the_app_and_the_cli(run: Run, capsys) -> None:
    holder = start_holder(run)
    try:
        with pytest.raises(JobBusyError, match="busy"):
            launch_job(run, "train", ["train", "--run", str(run.path)])
        assert cli.main(["train", "--run", str(run.path)]) == 2
        assert "busy" in capsys.readouterr().err
        assert job_status(run).kind == "hold"  # the refused launches left the running job's files alone
    finally:
        assert cancel_job(run)
    holder.wait(timeout=30)
    status = job_status(run)
    assert status.state == "cancelled" and not status.active
    with job_session(run, "next"):  # the lock is free again
        pass


def test_a_killed_job_reads_failed_with_its_last_lines(run: Run) -> None:
    holder = start_holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    status = job_status(run)
    assert status.state == "failed" and "without recording a result" in status.error
    assert "holding the lock" in status.log_tail
    assert not cancel_job(run)  # nothing active to cancel


@pytest.mark.parametrize("reading", ["read_progress", "log_tail"])
def test_a_job_ending_while_its_status_is_read_never_reads_failed(run: Run, monkeypatch, reading: str) -> None:
    """The job ends (here: cancelled) in the middle of `job_status`, while it reads the job's files."""
    import valuation.jobs.background as background

    holder = start_holder(run)
    read = getattr(background, reading)

    def read_while_the_job_ends(*args, **kwargs):
        if holder.poll() is None:
            holder.send_signal(signal.SIGTERM)
            holder.wait(timeout=30)
        return read(*args, **kwargs)

    monkeypatch.setattr(background, reading, read_while_the_job_ends)
    assert job_status(run).state in ("running", "cancelled")  # never "failed": it did record its end
    assert job_status(run).state == "cancelled"


def test_launched_job_gets_its_own_group_and_its_output_in_the_log(run: Run) -> None:
    job = launch_job(run, "train", ["train", "--run", str(run.path), "--epochs", "-1"])  # refused at once
    assert job.own_group and read_job(run) == job
    status = wait_for_job(run, timeout_s=120)
    assert status.state == "failed" and "training.epochs" in status.error
    assert "training.epochs" in status.log_tail  # the CLI's own message


def test_log_tail_keeps_a_progress_bars_last_state(run: Run) -> None:
    job_dir(run).mkdir(parents=True)
    (job_dir(run) / "log.txt").write_text("start\nbar 1%\rbar 50%\rbar 100%\n\nend\n")
    assert log_tail(run).splitlines() == ["start", "bar 100%", "end"]
    assert log_tail(run, lines=1) == "end"
