"""The retrain games on the reward models' objectives, read off the run's pooled evaluation.

The reward-free games (`retrain`) teacher-force held-out pairs. The reward models' objectives need
responses sampled from each coalition's model: the run's pooled evaluation (`evaluation.importance`)
holds a pool of them per prompt, drawn from the anchor coalitions, with every response's rewards
and its log-probability under each anchor (the proposal q). Any model's utility follows from the
same pool once each response is teacher-forced under that model, at the sampling temperature T:

    log pi~(y) = sum_t log softmax(log pi_t / T)[y_t]        the model as the sampler samples it
    v_x(S) = sum_i w_i r(y_i),   w = softmax_i(log pi~_S(y_i) - log q(y_i))

with pi the union's own adapter (retrained), the one holding its members' summed LoRA updates
(merged), or the formula over its members (arithmetic: the target the evaluation weighed already,
read from its files). The three games read the same responses and rewards, so they differ by their
weights only. A model the anchors reach poorly gets a small effective sample size (ESS): its mean
is recorded beside the table and said in words; such a model is not sampled directly here.

    <run>/validation/retrain/pool/seed<k>/chunk-NNNN.json  the pool's log-probabilities under the unions' models
    <run>/validation/retrain/rewards.csv                   method, seed, coalition, prompt, <objective>...
    <run>/validation/retrain/rewards.json                  what it was computed on, and each method's mean ESS
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..evaluation.importance import anchor_coalitions, proposal_log_density, weighted_utilities
from ..evaluation.store import chunk_name
from ..games.coalitions import coalition_name, parse_coalition
from ..lm.adapters import read_record, seed_adapter
from ..storage import atomic_write_json, atomic_write_text, digest
from .results import retrain_agreement, retrain_findings, retrain_values
from .retrain import METHODS, game_coalitions, method_terms, retrain_model, train_and_score, unions
from .settings import ValidationError, retrain_dir

if TYPE_CHECKING:
    from ..evaluation.estimators import Evaluation, Shard
    from .inputs import Inputs
    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext

TABLE, RECORD = "rewards.csv", "rewards.json"


class NoPool(ValidationError):
    """The run has no finished pooled evaluation of the retrained sources to read the rewards off."""


def run_retrain(inputs: Inputs, reporter: Reporter) -> Path:
    """The retrain experiment: the union adapters and the reward-free games (`retrain`), then the
    reward objectives where the run has a pooled evaluation of the sources; the findings in the log."""
    path = train_and_score(inputs, reporter)
    recorded = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    try:
        pooled_games(inputs.context, recorded["sources"], recorded["seeds"], reporter)
    except NoPool as reason:
        reporter.log(f"retrain: the reward objectives are left out: {reason}")
    for line in retrain_lines(inputs.context.run):
        reporter.log(line)
    return path


def retrain_lines(run: Run, values: pd.DataFrame | None = None) -> list[str]:
    """The experiment's findings in words: each shortcut's agreement with retraining, and how well the
    pool reaches the models where the reward objectives were read off it (page, report, command line)."""
    reach = pool_reach(run)
    values = retrain_values(run) if values is None else values
    return retrain_findings(retrain_agreement(values)) + ([reach_finding(reach)] if reach else [])


def finished_pool(context: RunContext, sources: list[str], reporter: Reporter) -> tuple[Evaluation, list[Shard]]:
    """The run's pooled evaluation, as it ran, and its chunks; NoPool says why there is none to read."""
    from ..evaluation.estimators import Evaluation, pool_shards
    from ..evaluation.job import coalitions_to_evaluate, evaluation_prompts
    from ..evaluation.store import EvaluationStore
    from ..lm.adapters import trained_seeds

    store = EvaluationStore(context.run)
    config, keys = store.settings, store.reward_keys
    if config is None or config.estimator != "pooled" or not keys:
        raise NoPool("the run has no pooled evaluation scored by reward models: evaluate it (pooled estimator) first.")
    outside = sorted(set(sources) - set(context.sources))
    if outside:
        raise NoPool(f"the run's evaluation does not value {outside}: evaluate the retrained sources first.")
    evaluation = Evaluation(context, config, store, evaluation_prompts(context, config),
                            coalitions_to_evaluate(context.sources, config),
                            {objective: (k["reward_key"], k.get("bootstrap_key", "")) for objective, k in keys.items()},
                            runner=iter, reporter=reporter)  # the pool is read, never run
    shards = pool_shards(evaluation, trained_seeds(context.run, context.sources))
    if not all(shard.is_done(store) for shard in shards):
        raise NoPool("the run's pooled evaluation is unfinished or out of date (its adapters, prompts or settings "
                     "changed since): evaluate the run again first.")
    return evaluation, shards


def pooled_games(context: RunContext, sources: list[str], seeds: int, reporter: Reporter) -> Path:
    """The three games on every reward model's objective, from the evaluation's pool; rewards.csv's
    path. Kept while the pool and the adapters are unchanged; each chunk's weighing is kept as written."""
    evaluation, shards = finished_pool(context, sources, reporter)
    folder = retrain_dir(context.run)
    path, record_path = folder / TABLE, folder / RECORD
    adapters = [seed_adapter(coalition_name(c), replica) for replica in range(seeds) for c in unions(sources)]
    key = digest({"pool": shards[0].key, "rewards": evaluation.reward_keys, "sources": sources, "seeds": seeds,
                  "unions": {name: digest(read_record(folder / "adapters", name)) for name in adapters}})
    if path.exists() and record_path.exists() and json.loads(record_path.read_text(encoding="utf-8"))["key"] == key:
        return path
    reporter.log(f"retrain: the reward objectives ({', '.join(evaluation.objectives)}) on the evaluation's pool of "
                 f"{len(evaluation.prompts)} prompts, weighed under every union's retrained and merged model")
    table = pd.concat([seed_games(evaluation, shards, sources, replica, key) for replica in range(seeds)],
                      ignore_index=True)
    unions_only = table[table.coalition.map(lambda name: len(parse_coalition(name)) >= 2)]
    pool = len(anchor_coalitions(context.sources)) * evaluation.config.pool_per_anchor
    columns = ["method", "seed", "coalition", "prompt", *evaluation.objectives]  # as utilities.csv's
    atomic_write_text(path, table[columns].to_csv(index=False, float_format="%.6g"))
    atomic_write_json(record_path, {"key": key, "prompts": len(evaluation.prompts), "pool": pool,
                                    "ess": unions_only.groupby("method", sort=False).ess.mean().to_dict()})
    return path


def seed_games(evaluation: Evaluation, shards: list[Shard], sources: list[str], replica: int, key: str
               ) -> pd.DataFrame:
    """Training seed `replica`'s three games, chunk by chunk: per (method, coalition, prompt), each
    objective's weighted utility and the ESS."""
    from ..evaluation.estimators import seed_weights, weigh

    context, store, temperature = evaluation.context, evaluation.store, evaluation.config.temperature
    model, solo = retrain_model(context, sources, replica)
    targets = {}  # (method, coalition) -> (the name of its log-probabilities, its tempered terms)
    for coalition in game_coalitions(sources):
        for method in METHODS:
            terms = [(m, w / temperature) for m, w in method_terms(model, coalition, method, replica, solo)]
            by_formula = method == "arithmetic" or len(coalition) < 2  # named as the evaluation names its targets
            name = coalition_name(frozenset(solo[s] for s in coalition)) if by_formula else \
                f"{method}:{coalition_name(coalition)}"
            targets[(method, coalition_name(coalition))] = (name, terms)
    anchors = [coalition_name(a) for a in anchor_coalitions(context.sources)]
    frames = []
    for shard in shards:
        weights = seed_weights(store, shard, replica)["token"]
        variants = {("token", name): terms for name, terms in targets.values() if name not in weights}
        chunk_path = retrain_dir(context.run) / "pool" / f"seed{replica + 1}" / f"{chunk_name(shard.index)}.json"
        chunk_key = digest({"samples": shard.key, "retrain": key, "variants": sorted(name for _, name in variants)})
        if not (chunk_path.exists() and json.loads(chunk_path.read_text(encoding="utf-8"))["key"] == chunk_key):
            stage = evaluation.reporter.stage(f"retrain: weighing chunk {shard.index + 1} of {len(shards)}, "
                                              f"seed {replica + 1}")
            own = weigh(model, context.base.tokenizer, shard.responses(store), variants,
                        shard.settings.max_batch_rows, stage)["token"]
            atomic_write_json(chunk_path, {"key": chunk_key, "token": own})
        weights = {**weights, **json.loads(chunk_path.read_text(encoding="utf-8"))["token"]}
        frame = store.frame(shard.key, shard.index, evaluation.objectives)
        frames.append(prompt_games(frame, weights, anchors, targets, evaluation.objectives).assign(seed=replica))
    return pd.concat(frames, ignore_index=True)


def prompt_games(frame: pd.DataFrame, weights: dict[str, list[float]], anchors: list[str],
                 targets: dict[tuple[str, str], tuple[str, Any]], objectives: list[str]) -> pd.DataFrame:
    """One chunk's utilities, prompt by prompt: each target's self-normalised weighted mean of the
    pool's rewards against the anchors' mixture, and its ESS."""
    prompts, rewards = frame.prompt_id.to_numpy(), frame[objectives].to_numpy(float)
    parts = []
    for prompt in dict.fromkeys(prompts):
        pool = prompts == prompt  # the prompt's responses, in file order (as its weights are)

        def read(names: list[str]) -> np.ndarray:
            return np.array([np.asarray(weights[name])[pool] for name in names])

        utilities, ess = weighted_utilities(read([name for name, _ in targets.values()]),
                                            proposal_log_density(read(anchors)), rewards[pool])
        part = pd.DataFrame(utilities, columns=objectives)
        parts.append(part.assign(method=[m for m, _ in targets], coalition=[c for _, c in targets], prompt=prompt,
                                 ess=ess))
    columns = ["method", "coalition", "prompt", *objectives, "ess"]
    return pd.concat(parts, ignore_index=True)[columns]


def pool_reach(run: Run) -> dict[str, Any]:
    """What the reward games were read off: prompts, responses per prompt, and each method's mean ESS
    over the coalitions of two or more sources; {} before they ran."""
    path = retrain_dir(run) / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def reach_finding(reach: dict[str, Any]) -> str:
    """How well the pool reaches the coalitions' models, in words (page, report, command line)."""
    methods = ", ".join(f"{ess:.1f} {method}" for method, ess in reach["ess"].items())
    return (f"The reward objectives are read off the evaluation's pool ({reach['prompts']} prompts, {reach['pool']} "
            f"responses each, 95% intervals over the prompts): the mean effective sample size of the coalitions of two "
            f"or more sources is {methods}. Near 1, a coalition's utility rests on one response per prompt: read its "
            "values with care.")
