"""Ablation: a coalition as a weight-space merge of its adapters instead of log-probability arithmetic.

With LoRA, adapter l changes a weight by delta_W_l = s_l B_l A_l. The "cat" merge stacks the
members' factors, [B_a B_b] [s_a A_a; s_b A_b] = delta_W_a + delta_W_b: exactly the sum of the
updates (task arithmetic in weight space), at rank r_a + r_b. The "linear" merge averages the A
and B matrices themselves, which adds cross terms B_a A_b: an approximation, kept for comparison.

The merged adapter joins the PeftModel under a name like "merge:a+b" and is sampled like any
singleton coalition: `sample_coalitions(model, tokenizer, [GenerationRequest(frozenset({"merge:a+b"}), ...)])`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from peft import PeftModel

from .arithmetic import SamplingError, check_coalitions
from .forward import MODEL_LOCK
from ..games.coalitions import coalition_name

MERGE_PREFIX = "merge:"


def merged_adapter_name(coalition: Collection[str], combination_type: str = "cat") -> str:
    kind = "" if combination_type == "cat" else f"{combination_type}-"
    return f"{kind}{MERGE_PREFIX}{coalition_name(coalition)}"


def merged_coalition_adapter(model: PeftModel, coalition: Collection[str],
                             combination_type: Literal["cat", "linear"] = "cat") -> str:
    """The name of an adapter holding `coalition`'s adapters merged in weight space (created once).

    Both merges treat the members alike, so their order does not matter: they are sorted, as in the name.
    """
    check_coalitions(model, [coalition])
    members = sorted(coalition)
    if not members:
        raise SamplingError("the empty coalition has no adapters to merge: it is the base model.")
    if len(members) == 1:
        return members[0]
    name = merged_adapter_name(members, combination_type)
    with MODEL_LOCK:  # the adapters change under every other caller's feet otherwise
        if name not in model.peft_config:
            model.add_weighted_adapter(members, [1.0] * len(members), name, combination_type=combination_type)
            model.eval()  # new modules start in training mode, where mixed-adapter batches are refused
    return name
