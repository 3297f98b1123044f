"""Deterministic, seeded, disjoint splits: training pairs per source, reward-model pairs, and
held-out evaluation prompts.

A prompt's part is decided by hashing its opening user turn with the seed, so the same prompt
lands in the same part whichever source holds it: no prompt appears in two parts. The split is
made once, when a run's sources are chosen, and recorded pair by pair in the run's split.json;
jobs read it back from there (`read_split`) instead of splitting again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest

from .config import DataConfig
from .errors import UserError
from .data import Messages, PreferenceData, PreferencePair


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
    eval_prompts: list[EvalPrompt]  # drawn evenly across the chosen sources

    def summary(self) -> dict:
        """What the run records about its split: counts per source, and every part pair by pair."""
        return {
            "train_pairs": {s: len(p) for s, p in self.train.items()},
            "reward_pairs": {s: len(p) for s, p in self.reward.items()},
            "eval_prompts_per_source": dict(Counter(p.source for p in self.eval_prompts)),
            "eval_prompt_ids": [p.prompt_id for p in self.eval_prompts],
            "pair_ids": {"train": _ids(self.train), "reward": _ids(self.reward)},
        }


def _ids(part: dict[str, list[PreferencePair]]) -> dict[str, list[str]]:
    return {source: [p.pair_id for p in pairs] for source, pairs in part.items()}


def read_split(data: PreferenceData, recorded: dict) -> Split:
    """The split a run recorded (split.json), rebuilt from its pair ids over `data` (every source)."""
    if "pair_ids" not in recorded:
        raise SplitError("This run's split.json predates per-pair records: save the sources again on the Sources "
                         "page (or `python -m valuation sources --run RUN`) to record it.")
    pairs = {p.pair_id: p for p in data.pairs}
    missing = [i for part in recorded["pair_ids"].values() for ids in part.values() for i in ids if i not in pairs]
    missing += [i for i in recorded["eval_prompt_ids"] if i not in pairs]
    if missing:
        raise SplitError(f"The data no longer holds {len(missing)} pair(s) this run's split recorded (e.g. "
                         f"{missing[0]!r}): the dataset changed since. Save the sources again to split it anew.")

    def part(name: str) -> dict[str, list[PreferencePair]]:
        return {s: [pairs[i] for i in ids] for s, ids in recorded["pair_ids"][name].items()}

    prompts = [EvalPrompt(i, pairs[i].source, pairs[i].prompt) for i in recorded["eval_prompt_ids"]]
    return Split(part("train"), part("reward"), prompts)


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


def split_preferences(data: PreferenceData, config: DataConfig) -> Split:
    """Split every source of `data`: the chosen ones (`config.sources`, else all) train adapters and
    give evaluation prompts; reward pairs come from every source, disjoint by prompt from both."""
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
    return Split(train, reward, _even_prompts(eval_pool, config.eval_prompts))


def _cap(parts: dict[str, list[PreferencePair]], cap: int) -> None:
    if cap:
        for source in parts:
            parts[source] = parts[source][:cap]


def _even_prompts(pool: dict[str, list[PreferencePair]], wanted: int) -> list[EvalPrompt]:
    """Round-robin over sources so a small source's prompts are not drowned by a large one's."""
    prompts: list[EvalPrompt] = []
    seen: set[str] = set()
    for row in zip_longest(*pool.values()):
        for pair in row:
            if pair is None or pair.prompt_key in seen:
                continue
            seen.add(pair.prompt_key)
            prompts.append(EvalPrompt(pair.pair_id, pair.source, pair.prompt))
            if len(prompts) == wanted:
                return prompts
    return prompts
