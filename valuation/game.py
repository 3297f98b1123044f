"""Coalition utilities: v(S) = mean reward of responses sampled from coalition S's model.

Evaluation is a plain function from a config and the run's files to more files in the run:

    <run>/evaluation/settings.json               the EvaluationConfig of the last evaluation
    <run>/evaluation/coalitions.json             the coalitions it evaluates (all 2^n, or those a
                                                 seeded permutation sample visits)
    <run>/evaluation/samples/<key>/chunk-NNNN.jsonl   generations of one chunk of prompts, every coalition
    <run>/evaluation/scores/<objective>/<key>/chunk-NNNN.json   their rewards under one reward model
    <run>/evaluation/utilities.csv               coalition, prompt, one column per objective

`<key>` hashes everything that produced the samples (base model, adapters, prompts, sampling
settings), so a relaunch redoes only missing chunks, and a new reward model re-scores the stored
samples without generating again. Every file is written atomically: a killed job loses at most the
chunk it was working on. Every coalition answers the same prompts with the same seeds (common
random numbers), so differences between coalitions come from the coalitions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from .config import ConfigError, helped, to_dict
from .errors import UserError
from .runs import Run
from .shapley import CachedGame, coalition_name, permutation_shapley
from .splits import EvalPrompt
from .storage import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # the engine imports torch: loaded only when sampling, so the CLI starts fast
    from .arithmetic import Generation, SamplingSettings

Coalition = tuple[str, ...]
EXACT_MAX_SOURCES = 12  # beyond this, evaluate the coalitions a permutation sample visits
DEFAULT_ROW_TOKENS_PER_SECOND = 250.0  # decoding throughput on 2 CPU cores (fp32), before any measurement


class EvaluationError(UserError):
    """An evaluation that cannot run; the message says what to change."""


@dataclass
class EvaluationConfig:
    prompts: int = helped(16, "Held-out evaluation prompts to answer (taken evenly across sources).")
    prompts_file: str = helped("", "A JSONL of your own prompts ({prompt_id, messages} per line) instead of the "
                                   "run's held-out split (the demo run uses the project's own prompts).")
    samples: int = helped(2, "Responses sampled per prompt and coalition.")
    max_new_tokens: int = helped(48, "Most tokens per response.")
    temperature: float = helped(0.7, "Sampling temperature of the combined distribution (0: greedy).")
    top_p: float = helped(0.9, "Nucleus sampling after combining (1: off).")
    seed: int = helped(0, "Seed of the draws: the same for every coalition (common random numbers).")
    method: str = helped("auto", "'exact' (all 2^n coalitions), 'permutation' (those sampled permutations visit), "
                                 f"or 'auto' (exact up to {EXACT_MAX_SOURCES} sources).")
    permutations: int = helped(200, "With 'permutation': permutations sampled (antithetic pairs).")
    chunk_prompts: int = helped(4, "Prompts per unit of work: a relaunch resumes at the first missing chunk.")
    max_batch_rows: int = helped(64, "Memory budget: model rows decoded together.")

    def validate(self) -> None:
        if self.prompts < 1 or self.samples < 1 or self.chunk_prompts < 1:
            raise ConfigError("evaluation: prompts, samples and chunk_prompts must each be at least 1.")
        if self.method not in ("auto", "exact", "permutation"):
            raise ConfigError(f"evaluation.method={self.method!r}: use auto, exact or permutation.")
        if self.permutations < 2:
            raise ConfigError(f"evaluation.permutations={self.permutations}: sample at least 2 (one antithetic pair).")
        self.sampling().validate()

    def sampling(self) -> SamplingSettings:
        from .arithmetic import SamplingSettings

        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                seed=self.seed, max_batch_rows=self.max_batch_rows)

    def resolved_method(self, n_sources: int) -> str:
        if self.method != "auto":
            return self.method
        return "exact" if n_sources <= EXACT_MAX_SOURCES else "permutation"


PRESETS = {
    # 2 CPU cores: 16 coalitions x 16 prompts x 2 samples of 48 tokens, in about 15 minutes.
    "quick": EvaluationConfig(),
    # A GPU: the paper's scale of held-out prompts and longer answers.
    "paper": EvaluationConfig(prompts=200, samples=4, max_new_tokens=256, chunk_prompts=16, max_batch_rows=512),
}


def preset_config(preset: str, **overrides: Any) -> EvaluationConfig:
    if preset not in PRESETS:
        raise ConfigError(f"Unknown evaluation preset {preset!r}: use one of {sorted(PRESETS)}.")
    config = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------
# What to evaluate


def coalitions_to_evaluate(sources: list[str], config: EvaluationConfig) -> list[Coalition]:
    """All 2^n coalitions, or exactly those that `permutation_shapley` with this seed and budget visits,
    so the Shapley page's Monte Carlo estimate finds every coalition it asks for."""
    from .arithmetic import all_coalitions

    if config.resolved_method(len(sources)) == "exact":
        return all_coalitions(sources)
    recorder = CachedGame(lambda coalition: 0.0)
    permutation_shapley(sorted(sources), recorder, budget_permutations=config.permutations, seed=config.seed)
    order = {s: i for i, s in enumerate(sources)}
    return sorted((tuple(sorted(c, key=order.get)) for c in recorder.cache), key=lambda c: (len(c), c))


def evaluation_prompts(run: Run, config: EvaluationConfig) -> list[EvalPrompt]:
    """The first `config.prompts` of the run's held-out prompts (drawn evenly across sources by the
    split), or of the prompts file."""
    from .data import load_preferences
    from .splits import split_preferences

    if config.prompts_file:
        prompts = read_prompts_file(Path(config.prompts_file))
    else:
        data = run.load_config().data
        prompts = split_preferences(load_preferences(data), data).eval_prompts
    if len(prompts) < config.prompts:
        raise EvaluationError(f"Only {len(prompts)} evaluation prompts are available, fewer than the {config.prompts} "
                              "asked for: lower the number of prompts, or raise 'Evaluation prompts' on the Sources page.")
    return prompts[: config.prompts]


def read_prompts_file(path: Path) -> list[EvalPrompt]:
    try:
        rows = read_jsonl(path)
        return [EvalPrompt(str(r["prompt_id"]), str(r.get("kind", "")), list(r["messages"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"{path}: not a prompts file ({type(error).__name__}: {error}); each line needs "
                              '{"prompt_id": ..., "messages": [{"role": "user", "content": ...}]}.') from None


def estimate_seconds(n_coalition_rows: int, config: EvaluationConfig, row_tokens_per_second: float) -> float:
    """Decoding cost: every coalition's rows (|S|+1, or 1 for the empty set and singletons) decode
    max_new_tokens for every prompt and sample; plus scoring the responses (about 10 texts/s)."""
    row_tokens = n_coalition_rows * config.prompts * config.samples * config.max_new_tokens
    return row_tokens / row_tokens_per_second


def coalition_rows(coalitions: list[Coalition]) -> int:
    from .arithmetic import formula_terms

    return sum(len(formula_terms(c)) for c in coalitions)


# ---------------------------------------------------------------------------------------------
# Files


def evaluation_dir(run: Run) -> Path:
    return run.path / "evaluation"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def samples_key(base_model: str, adapter_records: dict[str, dict], prompts: list[EvalPrompt],
                coalitions: list[Coalition], config: EvaluationConfig) -> str:
    """Everything that decides the generations: a changed adapter or setting means new samples."""
    return _digest({
        "base": base_model,
        "adapters": {s: _digest(r) for s, r in sorted(adapter_records.items())},
        "prompts": [(p.prompt_id, p.messages) for p in prompts],
        "coalitions": coalitions,
        "sampling": to_dict(config.sampling()) | {"max_batch_rows": None},  # batching never changes results
        "samples": config.samples,
        "chunk_prompts": config.chunk_prompts,
    })


def chunk_name(index: int) -> str:
    return f"chunk-{index:04d}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_samples(path: Path, generations: list[Generation], prompts: list[EvalPrompt], first_prompt: int) -> None:
    rows = [{"coalition": list(g.coalition), "prompt_id": prompts[g.prompt_index - first_prompt].prompt_id,
             "prompt_index": g.prompt_index, "sample": g.sample_index, "text": g.text, "tokens": g.num_tokens,
             "finished_by_eos": g.finished_by_eos} for g in generations]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# The job

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def evaluate_run(run: Run, config: EvaluationConfig, log: Callable[[str], None] = print,
                 progress: Progress | None = None) -> Path:
    """Sample every coalition on the run's evaluation prompts, score them, write utilities.csv."""
    from .adapters import load_adapters, read_record, trained_sources
    from .arithmetic import coalition_requests, sample_coalitions
    from .models import load_model
    from .rewards import load_or_train_rewards

    config.validate()
    run_config = run.load_config()
    sources = run_config.data.sources or trained_sources(run)
    missing = sorted(set(sources) - set(trained_sources(run)))
    if missing:
        raise EvaluationError(f"No trained adapter for {missing}: train them on the Training page (or "
                              f"`python -m valuation train --run {run.path}`) before evaluating.")
    if len(sources) < 2:
        raise EvaluationError("Evaluate at least two sources: pick them on the Sources page and train their adapters.")
    prompts = evaluation_prompts(run, config)
    coalitions = coalitions_to_evaluate(sources, config)
    folder = evaluation_dir(run)
    atomic_write_json(folder / "settings.json", to_dict(config))
    atomic_write_json(folder / "coalitions.json", [coalition_name(frozenset(c)) for c in coalitions])

    log(f"Loading {run_config.model.name} with {len(sources)} adapters")
    base = load_model(run_config.model)
    rewards = load_or_train_rewards(run, base, run_config.rewards, progress=progress)
    for name, card_accuracy in _accuracies(run, rewards).items():
        log(f"reward model {name}: held-out accuracy {card_accuracy}")
    model = load_adapters(base, run, sources)

    key = samples_key(base.name, {s: read_record(run, s) for s in sources}, prompts, coalitions, config)
    chunks = [list(range(i, min(i + config.chunk_prompts, len(prompts)))) for i in range(0, len(prompts), config.chunk_prompts)]
    log(f"{len(coalitions)} coalitions x {len(prompts)} prompts x {config.samples} samples, in {len(chunks)} chunks")
    started = time.monotonic()
    for index, chunk in enumerate(chunks):
        path = folder / "samples" / key / f"{chunk_name(index)}.jsonl"
        if not path.exists():
            requests = coalition_requests([prompts[i].messages for i in chunk], coalitions, config.samples)
            requests = [replace(r, prompt_index=r.prompt_index + chunk[0]) for r in requests]  # seeds by global index
            done = 0

            def tick(k: int, total: int = len(requests)) -> None:
                nonlocal done
                done += k
                if progress:
                    progress(f"sampling chunk {index + 1}/{len(chunks)}", done, total)

            generations = sample_coalitions(model, base.tokenizer, requests, config.sampling(), progress=tick)
            write_samples(path, generations, prompts, 0)
            log(f"chunk {index + 1}/{len(chunks)} sampled ({time.monotonic() - started:.0f}s so far)")
        for objective, reward in rewards.items():
            _score_chunk(run, key, index, objective, reward, path, {p.prompt_id: p.messages for p in prompts}, progress)
        write_utilities(run, key, list(rewards), len(chunks))
    _record_throughput(run, coalition_rows(coalitions) * len(prompts) * config.samples * config.max_new_tokens,
                       time.monotonic() - started)
    return folder / "utilities.csv"


def _accuracies(run: Run, rewards: dict) -> dict[str, str]:
    from .rewards import read_reward_card

    cards = {name: read_reward_card(run, name) or {} for name in rewards}
    return {name: f"{card.get('heldout_accuracy', float('nan')):.3f} on {card.get('heldout_pairs', 0)} pairs"
            for name, card in cards.items()}


def scores_path(run: Run, objective: str, key: str, index: int) -> Path:
    return evaluation_dir(run) / "scores" / objective / key / f"{chunk_name(index)}.json"


def _score_chunk(run: Run, key: str, index: int, objective: str, reward: Any, samples: Path,
                 prompts: dict[str, list[dict]], progress: Progress | None) -> None:
    """Rewards of one chunk's samples; skipped when this reward model already scored them."""
    from .rewards import read_reward_card

    target = scores_path(run, objective, key, index)
    reward_key = _digest((read_reward_card(run, objective) or {}).get("key"))
    if target.exists() and json.loads(target.read_text()).get("reward_key") == reward_key:
        return
    rows = read_jsonl(samples)
    report = (lambda done, total: progress(f"{objective} rewards, chunk {index + 1}", done, total)) if progress else None
    scores = reward.score([prompts[r["prompt_id"]] for r in rows], [r["text"] for r in rows], report)
    atomic_write_json(target, {"reward_key": reward_key, "scores": [float(s) for s in scores]})


def write_utilities(run: Run, key: str, objectives: list[str], n_chunks: int) -> pd.DataFrame:
    """Per (coalition, prompt): the mean reward over samples, one column per objective, for every
    chunk that is sampled and scored so far."""
    frames = []
    for index in range(n_chunks):
        samples = evaluation_dir(run) / "samples" / key / f"{chunk_name(index)}.jsonl"
        paths = {o: scores_path(run, o, key, index) for o in objectives}
        if not samples.exists() or not all(p.exists() for p in paths.values()):
            continue
        frame = pd.DataFrame(read_jsonl(samples))
        for objective, path in paths.items():
            frame[objective] = json.loads(path.read_text())["scores"]
        frames.append(frame)
    if not frames:
        raise EvaluationError("No chunk is sampled and scored yet.")
    rows = pd.concat(frames)
    rows["coalition"] = rows["coalition"].map(lambda members: coalition_name(frozenset(members)))
    table = rows.groupby(["coalition", "prompt_id"], sort=False)[objectives].mean().reset_index()
    table = table.rename(columns={"prompt_id": "prompt"})
    atomic_write_text(evaluation_dir(run) / "utilities.csv", table.to_csv(index=False))
    return table


def load_samples(run: Run) -> pd.DataFrame:
    """Every stored generation of the latest evaluation with its rewards, for auditing a value."""
    settings = evaluation_dir(run) / "settings.json"
    frames = []
    for samples in sorted((evaluation_dir(run) / "samples").glob("*/chunk-*.jsonl")):
        key, index = samples.parent.name, int(samples.stem.split("-")[1])
        frame = pd.DataFrame(read_jsonl(samples))
        for scores in sorted((evaluation_dir(run) / "scores").glob(f"*/{key}/{samples.stem}.json")):
            frame[scores.parent.parent.name] = json.loads(scores.read_text())["scores"]
        frame["key"], frame["chunk"] = key, index
        frames.append(frame)
    if not frames or not settings.exists():
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    frame["coalition"] = frame["coalition"].map(lambda members: coalition_name(frozenset(members)) or "∅ (base)")
    return frame


def _record_throughput(run: Run, row_tokens: int, seconds: float) -> None:
    if seconds > 1:
        atomic_write_json(evaluation_dir(run) / "throughput.json", {"row_tokens_per_second": row_tokens / seconds})


def measured_throughput(run: Run) -> float:
    path = evaluation_dir(run) / "throughput.json"
    try:
        return float(json.loads(path.read_text())["row_tokens_per_second"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_ROW_TOKENS_PER_SECOND
