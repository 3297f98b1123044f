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
