"""Tokenizing conversations the one way every model here reads them: through the chat template."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt text for a conversation, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """A conversation's tokens up to the assistant's turn: what every model here is prompted with."""
    # The chat template already holds the special tokens it needs.
    return tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def reply_ids(tokenizer: PreTrainedTokenizerBase, reply: str, end: bool = False) -> list[int]:
    """A reply's tokens; with `end`, closed by the end token (a finished reply, as a reward model reads it)."""
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if end and tokenizer.eos_token_id is not None else ids


def fit_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
               max_tokens: int) -> list[dict[str, str]] | None:
    """The conversation cut to `max_tokens` prompt tokens (through the chat template) by its end.

    A conversation that fits is returned as it is. A longer one keeps its last user turn and as many
    turns before it as fit, dropping whole turns from the front so that it still opens with a user
    turn; a system message stays in front when the last user turn fits beside it. A last user turn
    too long to fit on its own keeps its end: its text is cut from the left, within the turn. None
    only when not even the chat template around an empty turn fits.
    """
    def fits(conversation: list[dict[str, str]]) -> bool:
        return len(prompt_ids(tokenizer, conversation)) <= max_tokens

    if fits(messages):
        return messages
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"]  # where a cut conversation may open
    for head in ([system, []] if system else [[]]):
        # Shorter suffixes tokenize shorter: binary search for the longest one that fits.
        best = _longest(len(starts), lambda k: fits(head + turns[starts[len(starts) - k]:]))
        if best:
            return head + turns[starts[len(starts) - best]:]
    return _cut_turn(tokenizer, turns[starts[-1]] if starts else turns[-1], fits)


def _cut_turn(tokenizer: PreTrainedTokenizerBase, turn: dict[str, str], fits) -> list[dict[str, str]] | None:
    """The turn alone, its text cut from the left to the most tokens that fit; None when none do."""
    ids = tokenizer(turn["content"], add_special_tokens=False)["input_ids"]

    def kept(k: int) -> list[dict[str, str]]:
        return [{**turn, "content": tokenizer.decode(ids[len(ids) - k:]) if k else ""}]

    best = _longest(len(ids), lambda k: fits(kept(k)))
    return kept(best) if best or fits(kept(0)) else None


def _longest(most: int, fits) -> int:
    """The largest k in 1..most for which fits(k) holds, assuming that it holds up to some k; 0 if none."""
    low, high, best = 1, most, 0
    while low <= high:
        middle = (low + high) // 2
        if fits(middle):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best
