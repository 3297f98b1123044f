"""What the tests share (conftest.py holds the fixtures): the app's path, tiny settings, small
preference files, runs with random adapters, and utility tables of games with known values,
written where an evaluation writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import valuation  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from valuation.config import RewardConfig, RewardObjective
from valuation.evaluation.settings import EvaluationConfig
from valuation.evaluation.store import EvaluationStore
from valuation.games.coalitions import all_coalitions, coalition_name
from valuation.games.utility_table import UtilityTable
from valuation.runs import Run

APP = str(Path(__file__).resolve().parents[1] / "app.py")

# An evaluation and reward models small enough for tests on the tiny model.
TINY_EVALUATION = EvaluationConfig(estimator="direct", prompts=2, samples=2, max_new_tokens=4, chunk_prompts=1)
TINY_REWARDS = RewardConfig(objectives=[RewardObjective("helpfulness", ["helpful-base"]),
                                        RewardObjective("harmlessness", ["harmless-base"])],
                            max_pairs=80, max_length=64, batch_tokens=1024)


def store(run: Run | Path) -> EvaluationStore:
    """A run's evaluation folder (a run given as its path too)."""
    return EvaluationStore(run if isinstance(run, Run) else Run(Path(run)))


def run_table(run: Run | Path, target: str | None = None) -> UtilityTable:
    """A run's utility table, as the pages and the command line load it."""
    return store(run).load(target)


def evaluation_folder(run: Run | Path) -> Path:
    return store(run).folder


def utilities_csv(run: Run | Path) -> Path:
    return store(run).table_path("utilities")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def table_rows(source: str, n: int) -> list[dict]:
    """n distinct preference pairs of one source, in the plain-table format."""
    return [{"prompt": f"{source} question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}",
             "source": source} for i in range(n)]


def random_adapter_run(root: Path, name: str, sources: list[str], rewards=None, layers: list[int] | None = None,
                       **data: object):
    """A run on the tiny model whose sources have random (non-trivial) LoRA adapters (on `layers`,
    else every layer), saved the way training saves them: a stand-in for DPO training where only
    the plumbing is under test."""
    from valuation.config import DataConfig, ModelConfig, RunConfig
    from valuation.data.sources import record_sources
    from valuation.lm.synthetic import save_random_adapters
    from valuation.runs import create_run

    config = RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=sources, **data),
                       rewards=rewards or RewardConfig())
    run = create_run(name, config, root=root)
    record_sources(run, config.data)
    save_random_adapters(run, sources, layers=layers)
    return run


# -----------------------------------------------------------------------------
# utility tables of games with known values, written where the evaluation writes them

GLOVES = ("L", "R1", "R2")  # one left glove, two right gloves: v(S) = pairs of gloves in S
GLOVE_SHAPLEY = {"L": 2 / 3, "R1": 1 / 6, "R2": 1 / 6}


def glove_frame() -> pd.DataFrame:
    """helpfulness is the glove game, harmlessness twice it."""
    rows = []
    for c in all_coalitions(GLOVES):
        left = int("L" in c)
        pairs = min(left, len(c) - left)
        rows.append({"coalition": coalition_name(c), "helpfulness": pairs, "harmlessness": 2 * pairs})
    return pd.DataFrame(rows)


def additive_prompt_frame(n_prompts: int = 30, seed: int = 0) -> pd.DataFrame:
    """An additive game per prompt: v_p(S) = sum_{i in S} w_ip, so phi_i = mean_p w_ip exactly.

    'strong' adds about 1 to helpfulness, 'noise' averages zero (its interval should span zero).
    """
    rng = np.random.default_rng(seed)
    players = ("strong", "weak", "noise")
    centre = {"strong": (1.0, -0.5), "weak": (0.3, 0.2), "noise": (0.0, 0.0)}
    weight = {p: np.array(centre[p])[:, None] + rng.normal(0, 0.3, (2, n_prompts)) for p in players}
    weight["noise"] -= weight["noise"].mean(1, keepdims=True)  # exactly zero mean
    rows = []
    for c in all_coalitions(players):
        u = sum((weight[p] for p in c), np.zeros((2, n_prompts)))
        rows += [{"coalition": coalition_name(c), "prompt": f"p{k}", "helpfulness": u[0, k], "harmlessness": u[1, k]}
                 for k in range(n_prompts)]
    return pd.DataFrame(rows)


def write_utilities(run_dir: Path, frame: pd.DataFrame) -> Path:
    """`frame` as the run's evaluation/utilities.csv; returns the run directory."""
    utilities_csv(run_dir).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(utilities_csv(run_dir), index=False)
    return run_dir


def write_sampled_evaluation(run_dir: Path, sources: list[str], permutations: int, seed: int) -> dict[str, float]:
    """What an evaluation of more than EXACT_MAX_PLAYERS sources leaves: its settings, and utilities of
    only the coalitions its permutation sample visits. The game is additive, source i adding i + 1,
    so every order's marginals are the Shapley values exactly; returns them."""
    from valuation.config import to_dict
    from valuation.evaluation.job import coalitions_to_evaluate

    config = EvaluationConfig(estimator="direct", permutations=permutations, seed=seed)
    worth = {source: i + 1.0 for i, source in enumerate(sources)}
    frame = pd.DataFrame([{"coalition": coalition_name(c), "quality": sum(worth[s] for s in c)}
                          for c in coalitions_to_evaluate(sources, config)])
    write_utilities(run_dir, frame)
    (evaluation_folder(run_dir) / "settings.json").write_text(json.dumps(to_dict(config)), encoding="utf-8")
    return worth


def frame_convergence(frame: pd.DataFrame, config=None, chunk: int | None = None) -> pd.DataFrame:
    """The values on the first k prompts of a utilities frame as an evaluation writes it, at the chunk
    boundaries: what the Shapley page draws as prompts are added."""
    from valuation.games.values import ValuationConfig
    from valuation.views.convergence import answered_table, convergence_frame, prefix_sizes

    table, order = answered_table(frame)
    return convergence_frame(table, config or ValuationConfig(), prefix_sizes(len(order), chunk), order)


def labelled(widgets, label: str):
    """The one widget of an AppTest list (at.radio, at.metric, ...) whose label starts with `label`."""
    (widget,) = [w for w in widgets if w.label.startswith(label)]
    return widget
