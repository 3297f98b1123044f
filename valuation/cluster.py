"""The Ray backend: the functions that run on one machine, run on a cluster instead.

    training     one Ray task per source (`train_task`): it loads the base, trains the source's
                 adapter with the source's own seed (`training.fit_adapter`), and returns the
                 adapter's files as bytes; the driver writes them into the run. Ray retries a task
                 whose node is lost.
    evaluation   a pool of actors (`ShardWorker`), each loading the base, every adapter and every
                 reward model once, from a copy of those files sent through Ray's object store. The
                 driver hands them shards (`estimators.Shard`: a chunk of prompts) and writes the
                 files each one returns into the run. A worker lost with its node costs its shard
                 only: the shard goes back to the queue for the others.

Nothing needs a shared file system. The run directory stays on the driver, the single source of
truth, so a relaunch skips whatever it holds. Progress from every task comes back through a queue
(`Relay`) and lands in the job's own progress file, the one the app reads.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import BackendConfig, ModelConfig
from .errors import UserError
from .progress import Reporter
from .storage import atomic_write_bytes

if TYPE_CHECKING:
    from .context import RunContext
    from .data import PreferencePair
    from .estimators import Runner, Shard
    from .training import TrainConfig

POLL_S = 0.5  # how often the driver replays the workers' progress while it waits
NODE_CHECK_S = 5.0  # how often it checks that the nodes of busy workers are still in the cluster
TASK_RETRIES = 3  # a training task is run again this many times when its worker or node dies
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


# ---------------------------------------------------------------- training: a task per source


def train_task(model: ModelConfig, adapter: str, pairs: list[PreferencePair], config: TrainConfig, seed: int,
               queue: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Train one adapter on a fresh base (on a Ray worker); its files as bytes, and its record."""
    from .adapters import save_adapter
    from .jobs import quiet_libraries
    from .models import load_model
    from .training import fit_adapter

    quiet_libraries()
    trained, record = fit_adapter(load_model(model), adapter, pairs, config, seed, Relay(queue))
    with tempfile.TemporaryDirectory(prefix="valuation-adapter-") as scratch:
        folder = save_adapter(trained, Path(scratch), adapter, record)
        return read_files(folder, [""]), record


def train_on_ray(context: RunContext, adapters: list[str], config: TrainConfig, reporter: Reporter
                 ) -> Iterator[tuple[str, dict[str, bytes], dict[str, Any]]]:
    """Every adapter trained by its own task, in parallel: (adapter, files, record) as each finishes."""
    import ray

    from .training import adapter_inputs

    with connected(context.backend):
        queue = relay_queue()
        task = ray.remote(train_task).options(**resources(context.backend), max_retries=TASK_RETRIES)
        pending = {}
        for adapter in adapters:
            pairs, seed = adapter_inputs(context, adapter)
            pending[task.remote(context.config.model, adapter, pairs, config, seed, queue)] = adapter
        reporter.log(f"{len(pending)} training task(s) sent to Ray ({context.backend.describe()})")
        try:
            while pending:
                for ref in wait_some(pending, queue, reporter):
                    source = pending.pop(ref)
                    files, record = ray.get(ref)
                    yield source, files, record
        finally:
            cancel_all(pending)


# ---------------------------------------------------------------- evaluation: a pool of workers


class ShardWorker:
    """A Ray actor that holds one engine (base, adapters, reward models) and runs shards on it.

    It rebuilds the run's config, adapters and reward models in a folder of its own from the files
    the driver sent, and returns each shard's files for the driver to write into the real run.
    """

    def __init__(self, files: dict[str, bytes], adapters: list[str], objectives: list[str]):
        from .adapters import load_adapters
        from .context import RunContext
        from .estimators import Engine
        from .jobs import quiet_libraries
        from .rewards import load_reward
        from .runs import Run

        quiet_libraries()
        self.run = Run.at(tempfile.mkdtemp(prefix="valuation-worker-"))
        write_files(self.run.path, files)
        base = RunContext.open(self.run, BackendConfig()).base
        rewards = {objective: load_reward(self.run, objective, base) for objective in objectives}  # before the adapters
        self.engine = Engine(load_adapters(base, self.run, adapters), base.tokenizer, rewards)

    def node(self) -> str:
        """The Ray node this worker runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run_shard(self, shard: Shard, queue: Any) -> dict[str, bytes]:
        from .estimators import run_shard

        run_shard(self.run, shard, self.engine, Relay(queue))
        return {str(path.relative_to(self.run.path)): path.read_bytes() for path in shard.paths(self.run)}


@contextmanager
def ray_shard_runner(context: RunContext, objectives: list[str], reporter: Reporter) -> Iterator[Runner]:
    """A shard runner on the backend's cluster. Workers start on the first shards that need them and
    serve every later call (the pooled fallback's shards too); they stop with the block."""
    import ray
    from ray.exceptions import RayActorError

    from .seeds import every_seed

    backend, run = context.backend, context.run
    with connected(backend):
        queue = relay_queue()
        adapters = every_seed(run, context.sources)  # each source's, and those under further seeds
        files = ray.put(read_files(run.path, ["", *(f"adapters/{a}" for a in adapters),
                                              *(f"rewards/{o}" for o in objectives)]))
        # max_restarts=0: a lost worker is replaced by the others taking its shard, never restarted
        # into a slot that a smaller cluster may no longer have.
        worker = ray.remote(ShardWorker).options(**resources(backend), max_restarts=0)
        slots = backend.workers or max(1, worker_slots(backend, [n["Resources"] for n in ray.nodes() if n["Alive"]]))
        workers: dict[Any, Any] = {}  # worker -> the reference to its node's id
        pending: dict[Any, tuple[Any, Shard]] = {}
        checked = time.monotonic()

        def start() -> Any:
            started = worker.remote(files, adapters, objectives)
            workers[started] = started.node.remote()
            return started

        def result(ref: Any) -> Any:
            """What a worker's call returned, or None if the worker died (with its node, say)."""
            try:
                return ray.get(ref)
            except RayActorError:
                return None

        def on_lost_nodes() -> list[Any]:
            """In-flight calls whose worker's node has left the cluster: Ray may take long to fail them."""
            alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
            ready, _ = ray.wait(list(workers.values()), num_returns=len(workers), timeout=0)
            lost = {w for w, node in workers.items() if node in ready and result(node) not in alive}
            return [ref for ref, (chosen, _) in pending.items() if chosen in lost]

        def run_on_cluster(shards: list[Shard]) -> Iterator[Shard]:
            nonlocal checked
            todo: deque[Shard] = deque()
            for shard in shards:
                if shard.is_done(run):
                    yield shard  # stored by an earlier attempt: a relaunch skips it
                else:
                    todo.append(shard)
            idle = list(workers) + [start() for _ in range(min(slots, len(todo)) - len(workers))]
            if todo:
                reporter.log(f"{len(todo)} chunk(s) on {len(workers)} Ray worker(s) ({backend.describe()})")
            while todo or pending:
                while idle and todo:
                    chosen, shard = idle.pop(), todo.popleft()
                    pending[chosen.run_shard.remote(shard, queue)] = (chosen, shard)
                finished, lost = wait_some(pending, queue, reporter), []
                if time.monotonic() - checked > NODE_CHECK_S:
                    checked, lost = time.monotonic(), on_lost_nodes()
                for ref in [*finished, *(ref for ref in lost if ref not in finished)]:
                    chosen, shard = pending.pop(ref)
                    returned = None if ref in lost else result(ref)
                    if returned is None:  # the worker is gone: its shard goes back to the queue
                        workers.pop(chosen)
                        ray.kill(chosen)
                        todo.appendleft(shard)
                        reporter.log(f"a Ray worker was lost (its node left?): chunk {shard.index + 1} goes to "
                                     f"another ({len(workers)} left)")
                        if not workers:
                            idle.append(start())
                        continue
                    write_files(run.path, returned)
                    idle.append(chosen)
                    yield shard

        try:
            yield run_on_cluster
        finally:
            cancel_all(pending)
            for each in workers:
                ray.kill(each)
