"""Fitting prompts to the training cap by their end (tokens.fit_prompt), and the counts training,
validation and the Sources page take from it."""

from __future__ import annotations

import pytest

from valuation.data.preferences import PreferencePair
from valuation.lm.tokens import fit_prompt, prompt_ids
from valuation.training.pairs import select_pairs
from valuation.training.settings import TrainConfig

CAP = 64
LONG = "word " * 200  # far over the cap on its own


@pytest.fixture(scope="module")
def tokenizer():
    from valuation.lm.models import load_model_tokenizer
    from valuation.config import ModelConfig

    return load_model_tokenizer(ModelConfig(name="tiny"))  # the embedded tokenizer, no weights loaded


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def conversation(turns: int, last: str = "and now?") -> list[dict[str, str]]:
    """`turns` short exchanges, then a last user turn."""
    messages = []
    for k in range(turns):
        messages += [user(f"question {k} " + "about things " * 2), assistant(f"answer {k} " + "with words " * 2)]
    return messages + [user(last)]


def test_a_prompt_that_fits_is_kept_as_it_is(tokenizer) -> None:
    messages = conversation(1)
    assert len(prompt_ids(tokenizer, messages)) <= CAP
    assert fit_prompt(tokenizer, messages, CAP) is messages


def test_a_long_conversation_keeps_its_last_user_turn_and_the_turns_that_fit(tokenizer) -> None:
    messages = conversation(8)
    assert len(prompt_ids(tokenizer, messages)) > CAP
    fitted = fit_prompt(tokenizer, messages, CAP)
    assert fitted is not None and len(prompt_ids(tokenizer, fitted)) <= CAP
    assert fitted[-1] == messages[-1] and fitted == messages[-len(fitted):]  # its end, whole turns
    assert fitted[0]["role"] == "user" and len(fitted) > 1  # opens on a user turn, with earlier context
    one_more = messages[-len(fitted) - 2:]  # the exchange before it, opening on its user turn
    assert len(prompt_ids(tokenizer, one_more)) > CAP  # as much context as fits, no less


def test_a_system_message_stays_when_it_fits_beside_the_end(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *conversation(8)]
    fitted = fit_prompt(tokenizer, messages, CAP)
    assert fitted[0] == messages[0] and fitted[1]["role"] == "user" and fitted[-1] == messages[-1]
    assert len(prompt_ids(tokenizer, fitted)) <= CAP

    wordy = [{"role": "system", "content": LONG}, *conversation(2)]
    fitted = fit_prompt(tokenizer, wordy, CAP)  # the system message cannot fit: the conversation's end can
    assert fitted is not None and fitted[0]["role"] == "user" and fitted[-1] == wordy[-1]


def test_a_last_user_turn_longer_than_the_cap_keeps_its_end(tokenizer) -> None:
    question = LONG + "so which one is it?"
    for messages in ([user(question)], conversation(2, last=question),
                     [{"role": "system", "content": "Be brief."}, user(question)]):
        fitted = fit_prompt(tokenizer, messages, CAP)
        assert fitted is not None and len(fitted) == 1 and fitted[0]["role"] == "user"  # the turn alone
        assert fitted[0]["content"].endswith("so which one is it?") and question.endswith(fitted[0]["content"])
        assert CAP - 2 <= len(prompt_ids(tokenizer, fitted)) <= CAP  # cut from the left: as much of it as fits
    # dropped only when nothing can be kept: the chat template around an empty turn is longer than the cap
    template = len(prompt_ids(tokenizer, [user("")]))
    assert fit_prompt(tokenizer, [user(LONG)], template - 1) is None
    assert len(prompt_ids(tokenizer, fit_prompt(tokenizer, [user(LONG)], template))) <= template


def test_select_pairs_counts_whole_truncated_and_dropped(tokenizer) -> None:
    prompts = [conversation(1), conversation(8), [user(LONG)], conversation(6), conversation(3, last=LONG), [user("hi")]]
    pairs = [PreferencePair("s", prompt, "yes", "no", i) for i, prompt in enumerate(prompts)]
    config = TrainConfig(max_pairs=0, max_prompt_length=CAP, max_length=96)
    selected = select_pairs(pairs, tokenizer, config)
    assert (selected.whole, selected.truncated, selected.dropped) == (2, 4, 0)  # no pair lost to a long prompt
    assert len(selected.rows) == selected.whole + selected.truncated == len(pairs)
    assert all(len(prompt_ids(tokenizer, row["prompt"])) <= CAP for row in selected.rows)
    assert [row["prompt"][-1] for row in selected.rows][:2] == [prompts[0][-1], prompts[1][-1]]
    assert not selected.too_many_dropped

    capped = select_pairs(pairs, tokenizer, TrainConfig(max_pairs=2, max_prompt_length=CAP, max_length=96))
    assert (capped.whole, capped.truncated, capped.dropped) == (1, 1, 0)  # stops once two are kept


def test_the_sources_preview_and_validation_fit_prompts_as_training_does(tokenizer) -> None:
    from valuation.training.pairs import dropped_warning, prompt_fit
    from valuation.training.pairs import fitting_pairs

    train = {"chat": [PreferencePair("chat", conversation(8), "y", "n", i) for i in range(4)],
             "essay": [PreferencePair("essay", [user(f"{i} {LONG}")] if i % 2 else [user(f"{i}?")], "y", "n", i)
                       for i in range(4)]}
    frame = prompt_fit(train, tokenizer, TrainConfig(max_pairs=0, max_prompt_length=CAP, max_length=96)).set_index("source")
    assert frame.loc["chat", ["whole", "truncated", "dropped"]].tolist() == [0, 4, 0]
    assert frame.loc["essay", ["whole", "truncated", "dropped"]].tolist() == [2, 2, 0]  # the long ones keep their end
    assert frame.loc["essay", "kept share"] == frame.loc["chat", "kept share"] == 1.0
    assert dropped_warning({s: (r.whole + r.truncated, r.dropped) for s, r in frame.iterrows()}) is None
    # the one warning, for the sources that lose over a fifth of the pairs they read (2 of 5, not 1 of 10)
    warning = dropped_warning({"lossy": (3, 2), "fine": (9, 1)})
    assert "lossy (2 of 5)" in warning and "fine" not in warning

    fitted = fitting_pairs(train["chat"] + train["essay"], tokenizer, CAP, count=5)
    assert [p.pair_id for p in fitted] == ["chat:0", "chat:1", "chat:2", "chat:3", "essay:0"]
    assert all(len(prompt_ids(tokenizer, p.prompt)) <= CAP for p in fitted)
    assert fitted[0].prompt == select_pairs(train["chat"], tokenizer, TrainConfig(max_prompt_length=CAP)).rows[0]["prompt"]
