"""The vocabulary of coalitions, defined once: what a coalition is, how it is named and enumerated,
the arithmetic formula that builds its model, and what that model costs to decode.

A coalition S is a frozenset of source names. Its model is built by log-probability arithmetic,

    log pi_S = sum_{l in S} log pi_l + (1 - |S|) log pi_0 - log Z,

so the empty coalition is the base model pi_0 and a singleton is its adapter alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

Coalition = frozenset[str]

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch: the base model pi_0
EXACT_MAX_PLAYERS = 12  # up to here every one of the 2^n coalitions is evaluated; beyond, a permutation sample
# Up to here a coalition's exact log-likelihood under the token-level arithmetic model is computed for
# every coalition (a vocabulary logsumexp per coalition and token); beyond, only the sequence level.
TOKEN_LEVEL_MAX_PLAYERS = 8
# A computational cap, not a choice: past it 2^n coalitions (and the 2^n x n weights of exact
# Shapley, 168 MB at n = 20) are too many to enumerate at all.
ENUMERABLE_MAX_PLAYERS = 20


def coalition_name(coalition: Iterable[str]) -> str:
    """Canonical text form: sorted names joined by '+', '' for the empty coalition."""
    return "+".join(sorted(coalition))


def shown_name(name: str) -> str:
    """A coalition's name as people read it: the empty one is the base model."""
    return name or "∅ (base)"


def parse_coalition(text: object) -> Coalition:
    """'b + a' -> {'a', 'b'}; an empty string, None or NaN -> the empty coalition."""
    if text is None or text != text or not str(text).strip():  # text != text: NaN from a CSV
        return frozenset()
    names = [name.strip() for name in str(text).split("+")]
    if "" in names:
        raise ValueError(f"empty player name in coalition {text!r}")
    if len(set(names)) < len(names):
        raise ValueError(f"repeated player in coalition {text!r}")
    return frozenset(names)


def resolved_method(method: str, players: int, exact_max: int = EXACT_MAX_PLAYERS) -> str:
    """The one rule for 'auto': 'exact' (every coalition) while there are at most `exact_max` players,
    else 'permutation' (the coalitions a sample of orders visits); any other method as it is."""
    if method != "auto":
        return method
    return "exact" if players <= exact_max else "permutation"


def check_enumerable(n: int) -> None:
    if n > ENUMERABLE_MAX_PLAYERS:
        raise ValueError(f"exact computation needs all 2^n coalitions; n = {n} > {ENUMERABLE_MAX_PLAYERS} "
                         "players: sample permutations instead")


def all_coalitions(players: Sequence[str]) -> list[Coalition]:
    """All 2^n coalitions, smallest first; within a size, in the order of `players`."""
    check_enumerable(len(players))
    return [frozenset(c) for size in range(len(players) + 1) for c in combinations(players, size)]


def membership(coalitions: Sequence[Coalition], players: Sequence[str]) -> np.ndarray:
    """[coalitions, n] booleans: is player l in coalition S."""
    return np.array([[player in coalition for player in players] for coalition in coalitions], dtype=bool).reshape(
        len(coalitions), len(players))


def formula_terms(coalition: Iterable[str]) -> list[tuple[str, float]]:
    """(model, coefficient) pairs of log pi_S, members sorted by name; the base drops out of a
    singleton (its coefficient 1 - |S| is 0)."""
    members = sorted(coalition)
    if len(members) <= 1:
        return [(members[0] if members else BASE, 1.0)]
    return [(BASE, 1.0 - len(members))] + [(member, 1.0) for member in members]


def formula(coalition: Iterable[str]) -> str:
    """The formula for people: 'log π = log π_a + log π_b − log π_0' (the renormaliser log Z left implicit)."""
    members = sorted(coalition)
    if not members:
        return "log π = log π_0"
    base = len(members) - 1
    sums = " + ".join(f"log π_{member}" for member in members)
    return f"log π = {sums}" + ("" if base == 0 else " − log π_0" if base == 1 else f" − {base} log π_0")


def decode_rows(coalition: Iterable[str]) -> int:
    """Model rows one decoding step of this coalition costs: |S| + 1, or 1 for the base and a singleton."""
    return len(formula_terms(coalition))
