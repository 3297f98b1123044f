"""Evaluation on a Ray cluster: a pool of actors (`ShardWorker`), each loading the base, every
adapter and every reward model once, from a copy of those files sent through Ray's object store.
The driver hands them shards (`estimators.Shard`: a chunk of prompts) and writes the files each one
returns into the run. A worker lost with its node costs its shard only: the shard goes back to the
queue for the others."""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..config import BackendConfig
from ..rewards.store import load_reward
from ..runs import Run
from ..runtime.cluster import (NODE_CHECK_S, Relay, cancel_all, connected, read_files, relay_queue, resources,
                               wait_some, worker_slots, write_files)
from ..runtime.context import RunContext
from ..runtime.quiet import quiet_libraries
from .estimators import Engine, Runner, Shard, run_shard
from .seeds import every_seed
from .store import EvaluationStore

if TYPE_CHECKING:
    from ..progress import Reporter


class ShardWorker:
    """A Ray actor that holds one engine (base, adapters, reward models) and runs shards on it.

    It rebuilds the run's config, adapters and reward models in a folder of its own from the files
    the driver sent, and returns each shard's files for the driver to write into the real run.
    """

    def __init__(self, files: dict[str, bytes], adapters: list[str], objectives: list[str]):
        from ..lm.adapters import load_adapters  # peft and torch: only on the worker

        quiet_libraries()
        run = Run.at(tempfile.mkdtemp(prefix="valuation-worker-"))
        write_files(run.path, files)
        self.store = EvaluationStore(run)
        base = RunContext.open(run, BackendConfig()).base
        rewards = {objective: load_reward(run, objective, base) for objective in objectives}  # before the adapters
        self.engine = Engine(load_adapters(base, run, adapters), base.tokenizer, rewards)

    def node(self) -> str:
        """The Ray node this worker runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run_shard(self, shard: Shard, queue: Any) -> dict[str, bytes]:
        run_shard(self.store, shard, self.engine, Relay(queue))
        root = self.store.run.path
        return {str(path.relative_to(root)): path.read_bytes() for path in shard.paths(self.store)}


@contextmanager
def ray_shard_runner(context: RunContext, store: EvaluationStore, objectives: list[str], reporter: Reporter
                     ) -> Iterator[Runner]:
    """A shard runner on the backend's cluster. Workers start on the first shards that need them and
    serve every later call (the pooled fallback's shards too); they stop with the block."""
    import ray
    from ray.exceptions import RayActorError

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
                if shard.is_done(store):
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
                    store.forget(shard.key, shard.index)
                    idle.append(chosen)
                    yield shard

        try:
            yield run_on_cluster
        finally:
            cancel_all(pending)
            for each in workers:
                ray.kill(each)
