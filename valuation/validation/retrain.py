"""The retrain experiment: does the arithmetic stand in for training on a coalition's data?

The method's one claim is that a coalition built by adding log-probabilities behaves like a model
trained on the coalition's data, so that n trainings replace 2^n. Here the 2^n are paid for: every
coalition S of two or more of the chosen sources (up to EVERY_COALITION_MAX sources: 11 coalitions
at 4; beyond, only what leave-one-out reads: the n coalitions of all sources but one, and all of
them, n + 1 adapters) gets an adapter of its own, trained on the union of its members' training pairs, exactly the pairs
each member's adapter trained on, with the run's own training settings, under each of the run's
first `retrain_seeds` seeds (a union's seed follows from its name, as a source's does). The same
game is then played three ways on the same held-out pairs, every model teacher-forced:

    retrained    v(S) from S's own adapter (what training every coalition gives)
    arithmetic   v(S) from sum_{l in S} log pi_l + (1 - |S|) log pi_0, renormalised per token
    merged       v(S) from one adapter holding the sum of S's LoRA updates (`lm.merging`, "cat")

The three share the base (S empty) and each source alone (its own adapter): they differ only where
|S| >= 2. Beyond EVERY_COALITION_MAX sources the sources are valued by leave-one-out only (Shapley
needs every coalition). Utilities here: held-out preference accuracy and implicit reward margin (`rewards.heldout`), on
up to `retrain_pairs` pairs of the eval part taken evenly across sources (or of the gold set).
The reward models' objectives are read off the run's pooled evaluation (`retrain_rewards`).

    <run>/validation/retrain/adapters/<a+b>[@seedK]/  the union adapters (record: members, pair ids)
    <run>/validation/retrain/utilities.csv            method, seed, coalition, prompt, preference_accuracy, reward_margin
    <run>/validation/retrain/utilities.json           what the table was computed on (sources, seeds, pairs)

Each adapter is written when trained and the table when scored: a relaunch trains only what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..games.coalitions import Coalition, all_coalitions, coalition_name, formula_terms
from ..lm.adapters import adapter_dir, load_adapters, read_record, seed_adapter, trained_seeds, trained_sources
from ..rewards.heldout import HeldOut, coalition_utilities, held_out, responses_of
from ..storage import atomic_write_json, atomic_write_text
from ..training.dpo import source_seed
from ..training.settings import TrainConfig, recorded_config
from ..training.pairs import fitting_pairs
from .inputs import Inputs, fit_missing, judged_evenly
from .settings import ValidationConfig, ValidationError, retrain_dir

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext

EVERY_COALITION_MAX = 4  # 2^n - n - 1 more adapters: 11 at 4 sources, 26 at 5; beyond, n + 1
METHODS = ("retrained", "arithmetic", "merged")


def retrain_sources(config: ValidationConfig, run: Run) -> list[str]:
    """The sources whose coalitions are retrained: the named ones, else the run's first EVERY_COALITION_MAX."""
    trained = trained_sources(run)
    sources = sorted(config.sources) or trained[:EVERY_COALITION_MAX]
    missing = [s for s in sources if s not in trained]
    if missing or len(sources) < 2:
        raise ValidationError(f"The retrain experiment needs at least two trained sources; {missing or sources} "
                              f"{'lack an adapter' if missing else 'is not enough'} (trained: {trained or 'none'}): "
                              "train them first.")
    return sources


def unions(sources: list[str]) -> list[Coalition]:
    """The coalitions that get an adapter of their own: every one of two or more sources, or beyond
    EVERY_COALITION_MAX sources those leave-one-out reads (all sources but one, and all of them)."""
    if len(sources) <= EVERY_COALITION_MAX:
        return [c for c in all_coalitions(sources) if len(c) >= 2]
    grand = frozenset(sources)
    return [grand - {s} for s in sources] + [grand]


def game_coalitions(sources: list[str]) -> list[Coalition]:
    """The coalitions each game is scored on: the base, each source alone, and the unions."""
    return [frozenset(), *(frozenset([s]) for s in sources), *unions(sources)]


def union_pairs(context: RunContext, coalition: Coalition, settings: TrainConfig) -> list[PreferencePair]:
    """The members' training pairs, exactly as each member's adapter took them (its first
    `max_pairs` pairs whose prompt fits, cut as training cuts them), member after member."""
    return [pair for source in sorted(coalition)
            for pair in fitting_pairs(context.split.train[source], context.base.tokenizer, settings.max_prompt_length,
                                      settings.max_pairs or len(context.split.train[source]))]


def train_and_score(inputs: Inputs, reporter: Reporter) -> Path:
    """Train every coalition's adapter that is missing, then score the three reward-free games; the
    table's path (its record, utilities.json, says which sources and seeds)."""
    run = inputs.context.run
    sources = retrain_sources(inputs.config, run)
    seeds = min(inputs.config.retrain_seeds, trained_seeds(run, sources))
    folder = retrain_dir(run)
    path, key_path = folder / "utilities.csv", folder / "utilities.json"
    settings = recorded_config(read_record(run, sources[0]))  # every source of a run trains alike
    pairs = judged_evenly(inputs.context, settings.max_prompt_length, inputs.config.retrain_pairs)
    heldout = held_out(inputs.tokenizer, pairs, inputs.config.response_tokens)
    key = {"sources": sources, "seeds": seeds, "pairs": [h.prompt_id for h in heldout],
           "response_tokens": inputs.config.response_tokens}
    if not (path.exists() and key_path.exists() and json.loads(key_path.read_text(encoding="utf-8")) == key):
        compute_games(inputs.context, sources, settings, seeds, heldout, reporter)
        atomic_write_json(key_path, key)
    return path


def compute_games(context: RunContext, sources: list[str], settings: TrainConfig, seeds: int, heldout: list[HeldOut],
                  reporter: Reporter) -> None:
    """Train the union adapters that are missing, score the three games on `heldout`, write the table."""
    folder = retrain_dir(context.run)
    coalitions = unions(sources)
    reporter.log(f"retrain: {len(coalitions)} coalition adapter(s) of {', '.join(sources)} under {seeds} seed(s), "
                 f"each on its members' pairs")
    for replica in range(seeds):
        for coalition in coalitions:
            pairs = union_pairs(context, coalition, settings)
            fit_missing(context, folder / "adapters", seed_adapter(coalition_name(coalition), replica), pairs, settings,
                        source_seed(context.config.seed, coalition_name(coalition), replica), reporter,
                        members=sorted(coalition), pair_ids=[p.pair_id for p in pairs])
    table = pd.concat([scored_games(context, sources, replica, heldout, reporter) for replica in range(seeds)],
                      ignore_index=True)
    atomic_write_text(folder / "utilities.csv", table.to_csv(index=False, float_format="%.6g"))


def retrain_model(context: RunContext, sources: list[str], replica: int) -> tuple[Any, dict[str, str]]:
    """A private copy of the base (merges and union adapters join it, never the shared base) holding
    the sources' adapters under training seed `replica` and every union's: (the model, source -> its adapter)."""
    run, folder = context.run, retrain_dir(context.run) / "adapters"
    solo = {s: seed_adapter(s, replica) for s in sources}
    model = load_adapters(context.fresh_model(), run, list(solo.values()))
    for coalition in unions(sources):
        name = seed_adapter(coalition_name(coalition), replica)
        model.load_adapter(adapter_dir(folder, name), adapter_name=name, is_trainable=False)
    model.eval()
    return model, solo


def method_terms(model: Any, coalition: Coalition, method: str, replica: int, solo: dict[str, str]
                 ) -> list[tuple[str, float]]:
    """What coalition S's model is under each method, as (adapter, coefficient) terms of its log-probs:
    the base and each source alone are one model whatever the method; a union is its own adapter
    (retrained), the formula over its members (arithmetic), or one adapter holding their summed
    LoRA updates (merged)."""
    from ..lm.merging import merged_coalition_adapter

    members = [solo[s] for s in sorted(coalition)]
    if len(coalition) < 2 or method == "arithmetic":
        return formula_terms(members)
    if method == "retrained":
        return [(seed_adapter(coalition_name(coalition), replica), 1.0)]
    return [(merged_coalition_adapter(model, members), 1.0)]


def scored_games(context: RunContext, sources: list[str], replica: int, heldout: list[HeldOut],
                 reporter: Reporter) -> pd.DataFrame:
    """The three games' utilities under training seed `replica`, per (method, coalition, prompt)."""
    from ..lm.scoring import score_variants

    model, solo = retrain_model(context, sources, replica)
    variants = {(method, coalition_name(coalition)): method_terms(model, coalition, method, replica, solo)
                for coalition in game_coalitions(sources) for method in METHODS}
    scores = score_variants(model, context.base.tokenizer, responses_of(heldout), variants,
                            progress=reporter.stage(f"retrain: scoring seed {replica + 1}"))
    beta = read_record(context.run, sources[0])["beta"]
    frames = [coalition_utilities({coalition: values for (kind, coalition), values in scores.log_likelihoods.items()
                                   if kind == method}, heldout, beta).assign(method=method, seed=replica)
              for method in METHODS]
    columns = ["method", "seed", "coalition", "prompt", "preference_accuracy", "reward_margin"]
    return pd.concat(frames, ignore_index=True)[columns]
