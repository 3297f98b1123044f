"""Deterministic, seeded, disjoint splits: training pairs per source, reward-model pairs, and
held-out evaluation prompts.

A prompt's part is decided by hashing its opening user turn with the seed, so the same prompt
lands in the same part whichever source holds it: no prompt appears in two parts. The split is
made once, when a run's sources are chosen, and recorded pair by pair in the run's split.json;
jobs read it back from there (`read_split`) instead of splitting again.

With a trusted held-out file (`data.heldout_file`, a gold set) the sources only train: every one of
their pairs goes to training, less those whose prompt the gold set holds (counted). The gold set's
pairs are split by the same seeded prompt hash into the reward part and the evaluation part, in the
ratio reward_fraction : eval_fraction. Gold pairs are ids "gold:<source>:<row>", <source> their
file's `source` column (or "gold" when it has none), so they never clash with a source's pairs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError
from .preferences import Messages, PreferenceData, PreferencePair, load_table_path

GOLD = "gold"  # the gold set's one source when its file has no source column, and its pair ids' prefix
FROM_SOURCES = {"train": "sources", "reward": "sources", "eval": "sources"}


@dataclass
class EvalPrompt:
    prompt_id: str  # the pair it came from: "<source>:<row>"
    source: str
    messages: Messages


class SplitError(UserError):
    """A recorded split that no longer matches the data; the message says how to record it again."""


@dataclass
class Split:
    train: dict[str, list[PreferencePair]]  # source -> its training pairs (the chosen sources)
    reward: dict[str, list[PreferencePair]]  # source -> pairs kept for reward models (every source)
    eval_prompts: list[EvalPrompt]  # drawn evenly across the chosen sources (or the gold set's)
    eval_pairs: list[PreferencePair] = field(default_factory=list)  # the pair behind each evaluation prompt
    provenance: dict[str, str] = field(default_factory=lambda: dict(FROM_SOURCES))  # part -> where it came from
    removed_from_train: dict[str, int] = field(default_factory=dict)  # gold file: source -> pairs whose prompt it holds

    def summary(self) -> dict:
        """What the run records about its split: counts per source, where each part came from, and
        every part pair by pair."""
        summary = {
            "train_pairs": {s: len(p) for s, p in self.train.items()},
            "reward_pairs": {s: len(p) for s, p in self.reward.items()},
            "eval_prompts_per_source": dict(Counter(p.source for p in self.eval_prompts)),
            "eval_prompt_ids": [p.prompt_id for p in self.eval_prompts],
            "pair_ids": {"train": _ids(self.train), "reward": _ids(self.reward)},
            "provenance": dict(self.provenance),
        }
        if self.provenance != FROM_SOURCES:
            summary["removed_from_train"] = dict(self.removed_from_train)
        return summary


class GoldPair(PreferencePair):
    """A pair of the trusted held-out file: its id is prefixed so it cannot clash with a source's."""

    @property
    def pair_id(self) -> str:
        return f"{GOLD}:{self.source}:{self.row}"


def load_gold(config: DataConfig) -> PreferenceData | None:
    """The trusted held-out file's pairs (None when the run has none), grouped by its `source`
    column, or all under one source "gold" when it has none."""
    if not config.heldout_file.strip():
        return None
    data = load_table_path(Path(config.heldout_file.strip()), default_source=GOLD)
    pairs = [GoldPair(p.source, p.prompt, p.chosen, p.rejected, p.row) for p in data.pairs]
    return PreferenceData(pairs, data.report)


def gold_name(config: DataConfig) -> str:
    return f"gold file {Path(config.heldout_file.strip()).name}"


def _ids(part: dict[str, list[PreferencePair]]) -> dict[str, list[str]]:
    return {source: [p.pair_id for p in pairs] for source, pairs in part.items()}


def read_split(data: PreferenceData, recorded: dict, gold: PreferenceData | None = None) -> Split:
    """The split a run recorded (split.json), rebuilt from its pair ids over `data` (every source)
    and the run's trusted held-out file (`gold`, when it has one)."""
    if "pair_ids" not in recorded:
        raise SplitError("This run's split.json predates per-pair records: save the sources again on the Sources "
                         "page (or `python -m valuation sources --run RUN`) to record it.")
    pairs = {p.pair_id: p for p in data.pairs + (gold.pairs if gold else [])}
    missing = [i for part in recorded["pair_ids"].values() for ids in part.values() for i in ids if i not in pairs]
    missing += [i for i in recorded["eval_prompt_ids"] if i not in pairs]
    if missing:
        raise SplitError(f"The data no longer holds {len(missing)} pair(s) this run's split recorded (e.g. "
                         f"{missing[0]!r}): the dataset changed since. Save the sources again to split it anew.")

    def part(name: str) -> dict[str, list[PreferencePair]]:
        return {s: [pairs[i] for i in ids] for s, ids in recorded["pair_ids"][name].items()}

    prompts = [EvalPrompt(i, pairs[i].source, pairs[i].prompt) for i in recorded["eval_prompt_ids"]]
    return Split(part("train"), part("reward"), prompts, [pairs[i] for i in recorded["eval_prompt_ids"]],
                 recorded.get("provenance", dict(FROM_SOURCES)), recorded.get("removed_from_train", {}))


def seeded_uniform(seed: int, key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the seed and the key, stable across processes and platforms;
    a salt gives an independent draw for another purpose."""
    digest = hashlib.sha256(f"{salt}{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def part_of(pair: PreferencePair, config: DataConfig) -> str:
    u = seeded_uniform(config.seed, pair.prompt_key)
    if u < config.eval_fraction:
        return "eval"
    if u < config.eval_fraction + config.reward_fraction:
        return "reward"
    return "train"


def judging_pairs(source: str, data: PreferenceData, split: Split, config: DataConfig) -> list[PreferencePair]:
    """Held-out pairs to judge the adapter trained on `source`: its own eval part; with a trusted
    held-out file, where every source pair may train, the gold set's evaluation pairs instead."""
    if config.heldout_file.strip():
        return list(split.eval_pairs)
    return [p for p in data.pairs if p.source == source and part_of(p, config) == "eval"]


def verdict_pairs(source: str, data: PreferenceData, split: Split, config: DataConfig, read: int) -> list[PreferencePair]:
    """Every pair that can judge the adapters trained on `source` without having trained them, the
    best first: its eval part, its reward part, then its training pairs past the first `read` (those
    training read), less any whose prompt a read pair shares. With a trusted held-out file, the gold
    set's pairs (eval part first), none of which trained an adapter."""
    if config.heldout_file.strip():
        pairs = judging_pairs(source, data, split, config) + [p for part in split.reward.values() for p in part]
        return list({p.pair_id: p for p in pairs}.values())
    trained = {p.prompt_key for p in split.train[source][:read]}
    unread = [p for p in split.train[source][read:] if p.prompt_key not in trained]
    return judging_pairs(source, data, split, config) + split.reward.get(source, []) + unread


def split_preferences(data: PreferenceData, config: DataConfig, gold: PreferenceData | None = None) -> Split:
    """Split every source of `data`: the chosen ones (`config.sources`, else all) train adapters and
    give evaluation prompts; reward pairs come from every source, disjoint by prompt from both.
    With a trusted held-out file (`config.heldout_file`; `gold`, read here when not given) the
    sources only train and the gold set gives the reward and evaluation parts."""
    gold = gold if gold is not None else load_gold(config)
    if gold is not None:
        return _split_with_gold(data, gold, config)
    chosen = config.sources or data.sources
    train: dict[str, list[PreferencePair]] = {s: [] for s in chosen}
    reward: dict[str, list[PreferencePair]] = {s: [] for s in data.sources}
    eval_pool: dict[str, list[PreferencePair]] = {s: [] for s in chosen}
    # Within a part, pairs are ordered by a seeded hash, so caps take a random but fixed subset.
    ordered = sorted(data.pairs, key=lambda p: seeded_uniform(config.seed + 1, p.pair_id))
    for pair in ordered:
        part = {"train": train, "reward": reward, "eval": eval_pool}[part_of(pair, config)]
        if pair.source in part:
            part[pair.source].append(pair)
    _cap(train, config.train_pairs_per_source)
    _cap(reward, config.reward_pairs_per_source)
    prompts, behind = _even_prompts(eval_pool, config.eval_prompts)
    return Split(train, reward, prompts, behind)


def _split_with_gold(data: PreferenceData, gold: PreferenceData, config: DataConfig) -> Split:
    chosen = config.sources or data.sources
    trusted = {p.prompt_key for p in gold.pairs}
    train: dict[str, list[PreferencePair]] = {s: [] for s in chosen}
    removed: dict[str, int] = {s: 0 for s in chosen}
    for pair in sorted(data.pairs, key=lambda p: seeded_uniform(config.seed + 1, p.pair_id)):
        if pair.source in train:
            if pair.prompt_key in trusted:  # nothing the gold set holds may leak into an adapter
                removed[pair.source] += 1
            else:
                train[pair.source].append(pair)
    # The default split's hash and ratio, without a train part: eval_fraction / (eval + reward) of the prompts.
    eval_share = config.eval_fraction / (config.eval_fraction + config.reward_fraction)
    reward: dict[str, list[PreferencePair]] = {s: [] for s in gold.sources}
    eval_pool: dict[str, list[PreferencePair]] = {s: [] for s in gold.sources}
    for pair in sorted(gold.pairs, key=lambda p: seeded_uniform(config.seed + 1, p.pair_id)):
        part = eval_pool if seeded_uniform(config.seed, pair.prompt_key) < eval_share else reward
        part[pair.source].append(pair)
    _cap(train, config.train_pairs_per_source)
    _cap(reward, config.reward_pairs_per_source)
    prompts, behind = _even_prompts(eval_pool, config.eval_prompts)
    name = gold_name(config)
    return Split(train, reward, prompts, behind, {"train": "sources", "reward": name, "eval": name}, removed)


def _cap(parts: dict[str, list[PreferencePair]], cap: int) -> None:
    if cap:
        for source in parts:
            parts[source] = parts[source][:cap]


def _even_prompts(pool: dict[str, list[PreferencePair]], wanted: int) -> tuple[list[EvalPrompt], list[PreferencePair]]:
    """Round-robin over sources so a small source's prompts are not drowned by a large one's; the
    prompts, and the pairs behind them."""
    behind: list[PreferencePair] = []
    seen: set[str] = set()
    for row in zip_longest(*pool.values()):
        for pair in row:
            if pair is None or pair.prompt_key in seen:
                continue
            seen.add(pair.prompt_key)
            behind.append(pair)
            if len(behind) == wanted:
                break
        if len(behind) == wanted:
            break
    return [EvalPrompt(p.pair_id, p.source, p.prompt) for p in behind], behind
