"""The Ray connection every job's parallel part shares: connecting to a cluster (or starting one
for the job), checking what it is asked for against what its nodes hold, relaying progress from
its workers, and moving files as bytes.

Each job's own runner lives beside the job: `training.cluster` (a task per adapter) and
`evaluation.cluster` (a pool of workers for chunks of prompts). Nothing needs a shared file
system: the run directory stays on the driver, the single source of truth, so a relaunch skips
whatever it holds. Progress from every task comes back through a queue (`Relay`) and lands in the
job's own progress file, the one the app reads.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import BackendConfig
from ..errors import UserError
from ..progress import Reporter
from ..storage import atomic_write_bytes

POLL_S = 0.5  # how often the driver replays the workers' progress while it waits
NODE_CHECK_S = 5.0  # how often it checks that the nodes of busy workers are still in the cluster
CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # written by `ray start --head`


class ClusterError(UserError):
    """The cluster cannot run the job as asked; the message says what to change."""


# ---------------------------------------------------------------- the connection


def reachable_cluster() -> str | None:
    """The address of a Ray cluster this machine can reach without starting one ("auto" for the one
    `ray start --head` runs here, or RAY_ADDRESS), else None: what the app's launch panels offer."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        listening = is_listening(CURRENT_CLUSTER.read_text().strip(), timeout_s=0.3)
    except OSError:
        return None
    return "auto" if listening else None


def is_listening(address: str, timeout_s: float) -> bool:
    """Whether something accepts connections at `host:port`."""
    try:
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def connected(backend: BackendConfig) -> Iterator[None]:
    """Connected to the backend's cluster (or a Ray started for this block), the library shipped to
    its workers, and the resources asked for checked against what its nodes have."""
    import ray

    import valuation

    direct = backend.address not in ("", "auto") and not backend.address.startswith("ray://")
    if direct and not is_listening(backend.address, timeout_s=3.0):  # ray.init would wait a minute, then exit
        raise ClusterError(f"Nothing answers at the Ray address {backend.address!r}. Start the cluster there "
                           "(`ray start --head`), or use --address auto for the one running on this machine.")
    on_cancel = signal.getsignal(signal.SIGTERM)  # ray.init installs its own: the job's must stay
    try:
        # py_modules: every worker imports this very library, whatever it has installed.
        ray.init(address=backend.address or None, runtime_env={"py_modules": [valuation]},
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except ConnectionError as error:
        raise ClusterError(f"Cannot reach the Ray cluster at {backend.address!r} ({error}). Start it "
                           "(`ray start --head`), or leave the address empty for a Ray started for this job.") from None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_cancel)  # a cancelled job records "cancelled" and stops its tasks
    try:
        check_resources(backend, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        yield
    finally:
        ray.shutdown()


def check_resources(backend: BackendConfig, nodes: list[dict[str, float]]) -> None:
    """Refuse a request no node can hold: Ray would leave such a task waiting forever."""
    for kind, asked, flag in (("GPU", backend.gpus_per_task, "--gpus-per-task"),
                              ("CPU", backend.cpus_per_task, "--cpus-per-task")):
        most = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if asked > most:
            raise ClusterError(f"Each task asks for {asked:g} {kind}(s), but no node of the cluster has more than "
                               f"{most:g}: Ray would wait forever. Ask for at most {most:g} ({flag}), or add a node "
                               f"that has {asked:g}.")


def worker_slots(backend: BackendConfig, nodes: list[dict[str, float]]) -> int:
    """How many workers of the backend's size the nodes hold at once."""
    slots = 0
    for node in nodes:
        fits = [node.get("CPU", 0.0) // backend.cpus_per_task]
        if backend.gpus_per_task:
            fits.append(node.get("GPU", 0.0) // backend.gpus_per_task)
        slots += int(min(fits))
    return slots


def resources(backend: BackendConfig) -> dict[str, float]:
    return {"num_cpus": backend.cpus_per_task, "num_gpus": backend.gpus_per_task}


# ---------------------------------------------------------------- progress from the workers


class Relay(Reporter):
    """A job's Reporter inside a Ray task or actor: each call goes onto a queue, and the driver
    replays it on the job's own Reporter (`replay`), so every worker's progress lands in the one
    progress file the app reads. (No file of its own: the base class's init is not called.)"""

    def __init__(self, queue: Any):
        self.queue, self._bar, self._stage = queue, None, None

    def event(self, name: str, **fields: Any) -> None:
        self.queue.put(("event", (name,), fields))

    def log(self, message: str) -> None:
        self.queue.put(("log", (message,), {}))

    def step(self, stage: str, done: int, total: int, **fields: Any) -> None:
        self.queue.put(("step", (stage, done, total), fields))


def relay_queue() -> Any:
    """A queue on the driver's own node: it survives the loss of any other node."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def replay(queue: Any, reporter: Reporter) -> None:
    for method, args, fields in queue.get_nowait_batch(queue.qsize()):
        getattr(reporter, method)(*args, **fields)


def wait_some(pending: dict, queue: Any, reporter: Reporter) -> list:
    """The pending references that finished within POLL_S (maybe none), progress replayed meanwhile."""
    import ray

    done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
    replay(queue, reporter)
    return done


def cancel_all(pending: dict) -> None:
    """Stop every task still running (a cancelled job, or a failed one)."""
    import ray

    for ref in pending:
        ray.cancel(ref, force=True)


# ---------------------------------------------------------------- files as bytes


def read_files(root: Path, folders: list[str]) -> dict[str, bytes]:
    """Every file under `folders` of `root` (and `root`'s own files when "" is one), by relative path."""
    files = {}
    for folder in folders:
        paths = (root / folder).iterdir() if folder == "" else (root / folder).rglob("*")
        files |= {str(p.relative_to(root)): p.read_bytes() for p in paths if p.is_file()}
    return files


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        atomic_write_bytes(root / name, data)
