"""The playground: columns and their requests, streaming side by side, and the page on the tiny model."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from streamlit.testing.v1 import AppTest

from helpers import APP, table_rows, write_jsonl
from valuation.lm.adapters import load_adapters, save_adapter
from valuation.lm.arithmetic import GenerationRequest, SamplingSettings, sample_coalitions
from valuation.config import DataConfig, ModelConfig, RewardConfig, RewardObjective, RunConfig
from valuation.runtime.context import RunContext
from valuation.lm.models import load_model
from valuation.views.playground import (
    Column,
    adapter_stamps,
    coalition_preference,
    column_requests,
    default_columns,
    example_prompts,
    preference_table,
    reward_keys,
    reward_notes,
    stream_columns,
    with_last_user_turn,
)
from valuation.evaluation.job import evaluate_preferences
from valuation.evaluation.store import EvaluationStore
from valuation.progress import Reporter
from valuation.rewards.cards import accuracy_table, read_cards
from valuation.rewards.store import load_reward, reward_models
from valuation.runs import Run, create_run
from valuation.data.sources import record_sources
from valuation.data.splits import EvalPrompt

SOURCES = ["alpha", "beta"]
MESSAGES = [{"role": "user", "content": "How do plants grow?"}]
SETTINGS = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=5)


def make_run(root: Path, name: str = "demo", sources: list[str] = SOURCES, pairs: int = 40) -> Run:
    """A run on the tiny model whose sources have random (untrained, but non-trivial) LoRA adapters."""
    data = write_jsonl(root / f"{name}.jsonl", [row for s in ["alpha", "beta"] for row in table_rows(s, pairs)])
    run = create_run(name, RunConfig(model=ModelConfig(name="tiny", device="cpu"), data=DataConfig(dataset=str(data))), root)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    for seed, source in enumerate(sources):
        torch.manual_seed(seed)
        model = get_peft_model(load_model(ModelConfig(name="tiny", device="cpu")).model, lora)
        save_adapter(model, run, source, {"source": source, "beta": 0.1, "base_model": "tiny"})
    return run


@pytest.fixture(scope="module")
def coalition_model(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("runs"))
    loaded = load_model(ModelConfig(name="tiny", device="cpu"))
    return load_adapters(loaded, run), loaded.tokenizer


# -----------------------------------------------------------------------------
# the library


def column(*sources: str, merged: bool = False) -> Column:
    return Column(frozenset(sources), merged)


def test_columns_open_with_singletons_then_the_grand_coalition() -> None:
    assert default_columns([]) == []
    assert default_columns(["a"]) == [column("a")]
    assert default_columns(["a", "b"]) == [column("a"), column("b"), column("a", "b")]
    assert default_columns(list("abcde")) == [column("a"), column("b"), column("c"), column(*"abcde")]


def test_column_titles_and_formulas() -> None:
    assert (Column().title, Column().formula) == ("base model", "log π = log π_0")
    assert column("b", "a").title == "a + b"
    assert column("b", "a").formula == "log π = log π_a + log π_b − log π_0"
    assert column("a", merged=True).formula == "log π = log π_a"  # one adapter: nothing to merge
    merged = column("b", "a", merged=True)
    assert merged.is_merge and merged.formula == "π = π_0 with ΔW = ΔW_a + ΔW_b (weight-space merge)"


def test_every_column_asks_for_the_same_prompt_and_draws(coalition_model) -> None:
    model, _ = coalition_model
    columns = [Column(), column("alpha"), column("alpha", "beta"), column("alpha", "beta", merged=True)]
    requests = column_requests(model, columns, MESSAGES)
    assert [r.coalition for r in requests] == [frozenset(), {"alpha"}, {"alpha", "beta"}, {"merge:alpha+beta"}]
    assert {(r.prompt_index, r.sample_index) for r in requests} == {(0, 0)}
    assert all(r.messages == MESSAGES for r in requests)
    assert "merge:alpha+beta" in model.peft_config


def test_streamed_columns_match_the_sampler(coalition_model) -> None:
    model, tokenizer = coalition_model
    columns = [Column(), column("alpha"), column("alpha", "beta"), column("alpha")]
    steps = list(stream_columns(model, tokenizer, columns, MESSAGES, SETTINGS))
    final = steps[-1]
    expected = sample_coalitions(model, tokenizer, [GenerationRequest(c.sources, MESSAGES) for c in columns], SETTINGS)
    assert [o.text for o in final] == [g.text for g in expected]
    assert [o.tokens for o in final] == [g.num_tokens for g in expected]
    assert final[1].text == final[3].text  # the same coalition twice: the same draws, the same answer
    assert len(steps) == max(o.tokens for o in final)
    assert all(o.status in ("end of text", "token limit") and o.seconds > 0 for o in final)
    assert final[0].caption.startswith(f"{final[0].tokens} tokens · ")


def test_a_stop_ends_every_column(coalition_model) -> None:
    model, tokenizer = coalition_model
    stop = threading.Event()
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=50, seed=5)
    stream = stream_columns(model, tokenizer, [Column(), column("beta")], MESSAGES, settings, stop)
    next(stream)
    stop.set()
    final = list(stream)[-1]
    assert all(o.tokens <= 2 for o in final)
    assert {o.status for o in final} <= {"stopped", "end of text"}


class LengthReward:
    """A reward model whose score is known: the reply's length, plus `bonus`."""

    def __init__(self, bonus: float) -> None:
        self.bonus, self.key, self.scored = bonus, f"length+{bonus}", []

    def score(self, prompts, responses, progress=None) -> np.ndarray:
        assert prompts == [MESSAGES] and len(responses) == 1  # alone: its reward is the model's own score of it
        self.scored += responses
        return np.array([len(r) + self.bonus for r in responses])


def test_a_column_is_scored_by_every_reward_model_when_it_finishes(coalition_model) -> None:
    model, tokenizer = coalition_model
    rewards = {"helpfulness": LengthReward(0.5), "harmlessness": LengthReward(-1.0)}
    columns = [Column(), column("alpha"), column("alpha", "beta")]
    seen = [[(o.status, o.rewards and dict(o.rewards)) for o in outputs]  # the list is updated in place: copy
            for outputs in stream_columns(model, tokenizer, columns, MESSAGES, SETTINGS, rewards=rewards)]
    final = list(stream_columns(model, tokenizer, columns, MESSAGES, SETTINGS, rewards=rewards))[-1]
    for step in seen:
        assert all((status == "generating") == (scored is None) for status, scored in step)
    for output in final:  # each reward model's own score of the text shown
        assert output.rewards == {"helpfulness": len(output.text) + 0.5, "harmlessness": len(output.text) - 1.0}
    assert sorted(rewards["helpfulness"].scored) == sorted([o.text for o in final] * 2)  # once per run of the stream
    plain = list(stream_columns(model, tokenizer, columns, MESSAGES, SETTINGS))[-1]
    assert [o.text for o in plain] == [o.text for o in final] and all(o.rewards is None for o in plain)


def test_reward_models_are_described_with_their_accuracy_and_near_chance_in_words() -> None:
    accuracies = pd.DataFrame([{"objective": "helpfulness", "accuracy": 0.62, "lower": 0.57, "upper": 0.67,
                                "pairs": 376.0, "near_chance": False},
                               {"objective": "harmlessness", "accuracy": 0.52, "lower": 0.44, "upper": 0.60,
                                "pairs": 150.0, "near_chance": True}])
    notes = reward_notes(accuracies)
    assert notes["helpfulness"] == "held-out accuracy 62.0% [57.0%, 67.0%] on 376 pairs"
    assert notes["harmlessness"] == ("held-out accuracy 52.0% [44.0%, 60.0%] on 150 pairs: near chance, "
                                     "its rewards may be noise")


def test_prompts_and_conversations() -> None:
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "x" * 100}]
    examples = example_prompts([EvalPrompt("a:1", "a", conversation), EvalPrompt("b:2", "b", MESSAGES)])
    assert list(examples) == [f"a: {'x' * 70}…", "b: How do plants grow?"]
    edited = with_last_user_turn(conversation, "Why?")
    assert edited[:2] == conversation[:2] and edited[2] == {"role": "user", "content": "Why?"}
    assert with_last_user_turn([], "Why?") == [{"role": "user", "content": "Why?"}]


def test_adapter_stamps_change_when_an_adapter_is_retrained(tmp_path: Path) -> None:
    run = make_run(tmp_path, sources=["alpha"])
    before = adapter_stamps(run)
    assert [source for source, _ in before] == ["alpha"]
    record = run.path / "adapters" / "alpha" / "training.json"
    os.utime(record, (before[0][1] + 5, before[0][1] + 5))
    assert adapter_stamps(run) != before


# -----------------------------------------------------------------------------
# the page


def open_page(runs: Path, name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["run_name"] = name
    at.switch_page("pages/playground.py")
    at.run()
    (max_tokens,) = [n for n in at.number_input if n.label == "Max tokens"]
    return max_tokens.set_value(5).run()


def shown_texts(at: AppTest) -> list[str]:
    return [t.value.strip() for t in at.text]  # read back without a reply's leading space


def test_page_streams_every_column(runs_dir: Path) -> None:
    run = make_run(runs_dir)
    at = open_page(runs_dir, "demo")
    assert not at.exception
    assert [t.value for t in at.title] == ["Playground"]
    captions = [c.value for c in at.caption]
    for formula in ["log π = log π_0", "log π = log π_alpha", "log π = log π_beta", "log π = log π_alpha + log π_beta − log π_0"]:
        assert formula in captions
    prompt = at.selectbox[0]
    assert prompt.options[0] == "Write your own prompt" and prompt.value == prompt.options[1]  # a held-out example
    assert at.text_area[0].value.startswith(("alpha question", "beta question"))

    prompt.set_value("Write your own prompt").run()
    at.text_area[0].set_value(MESSAGES[0]["content"]).run()
    # what the library streams for the page's columns, on the run's adapters, with the page's settings
    loaded = load_model(ModelConfig(name="tiny", device="cpu"))
    model = load_adapters(loaded, run)
    settings = SamplingSettings(max_new_tokens=5)
    columns = [Column(), column("alpha"), column("beta"), column("alpha", "beta")]

    def expected_outputs() -> list:
        return list(stream_columns(model, loaded.tokenizer, columns, MESSAGES, settings))[-1]

    (generate,) = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception
    expected = expected_outputs()
    assert shown_texts(at) == [(o.text or "…").strip() for o in expected]  # the base model and three coalitions
    shown = [c.value for c in at.caption if "tokens ·" in c.value]
    assert [c.split(" · ")[0] for c in shown] == [f"{o.tokens} tokens" for o in expected]

    at.toggle(key="playground_merge_3").set_value(True).run()  # the grand coalition, merged in weight space
    assert any("weight-space merge" in c.value for c in at.caption)
    (generate,) = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception
    columns[3] = column("alpha", "beta", merged=True)
    assert shown_texts(at) == [(o.text or "…").strip() for o in expected_outputs()]


def test_page_without_adapters_explains_and_keeps_the_base_model(runs_dir: Path) -> None:
    make_run(runs_dir, "bare", sources=[])
    at = open_page(runs_dir, "bare")
    assert not at.exception
    assert "Train adapters on the Training page first" in at.info[0].value
    at.selectbox[0].set_value("Write your own prompt").run()
    (generate,) = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert "Write a message first" in at.warning[0].value
    at.text_area[0].set_value("Hi").run()
    (generate,) = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception
    assert len(at.text) == 1 and at.text[0].value


def rewarded_run(root: Path) -> Run:
    """A tiny run that an evaluation has been through: two reward models and the reward-free utilities."""
    run = make_run(root, "rewarded", pairs=100)
    config = run.load_config()
    config.rewards = RewardConfig(objectives=[RewardObjective("helpfulness", ["alpha"]),
                                              RewardObjective("harmlessness", ["beta"])],
                                  max_length=64, batch_tokens=1024, layers=[1, 2], holdout_fraction=0.3)
    run.save_config(config)
    record_sources(run, config.data)
    context = RunContext.open(run)
    reporter = Reporter(root / "rewarded-events.jsonl")
    reward_models(context, reporter)
    evaluate_preferences(context, EvaluationStore(run), load_adapters(context.base, run, SOURCES), 8, reporter)
    return run


def test_page_shows_each_finished_columns_rewards_and_what_they_are_worth(runs_dir: Path) -> None:
    run = rewarded_run(runs_dir)
    at = open_page(runs_dir, "rewarded")
    assert not at.exception
    at.selectbox[0].set_value("Write your own prompt").run()
    at.text_area[0].set_value(MESSAGES[0]["content"]).run()
    (generate,) = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception
    outputs = at.session_state["playground_outputs"]["outputs"]
    assert len(outputs) == 4 and all(o.status != "generating" for o in outputs)

    # every reward shown is the reward model's own score of the text shown above it
    loaded = load_model(ModelConfig(name="tiny", device="cpu"))
    load_adapters(loaded, run)
    models = {objective: load_reward(run, objective, loaded) for objective in reward_keys(read_cards(run))}
    assert list(models) == ["harmlessness", "helpfulness"]  # in the order the Shapley page lists them
    shown = [m.value for m in at.metric]
    assert [m.label for m in at.metric] == ["harmlessness reward", "helpfulness reward"] * 4
    for k, output in enumerate(outputs):
        for j, (objective, reward) in enumerate(models.items()):
            own = reward.score([MESSAGES], [output.text])[0]
            assert output.rewards[objective] == own
            assert shown[2 * k + j] == f"{output.rewards[objective]:+.3f}"

    # how far to trust them: each reward model's held-out accuracy, and each coalition's preference accuracy
    captions = [c.value for c in at.caption]
    footer = next(c for c in captions if c.startswith("Rewards are the run's reward models' scores"))
    for objective, note in reward_notes(accuracy_table(read_cards(run))).items():
        assert f"{objective}, {note}" in footer
        assert ("near chance" in note) == bool(accuracy_table(read_cards(run)).set_index("objective").near_chance[objective])
    preferences = preference_table(run)
    frame = pd.read_csv(run.path / "evaluation" / "preference.csv", dtype={"coalition": str}, keep_default_na=False)
    for sources in (["alpha"], ["beta"], ["alpha", "beta"]):
        said = coalition_preference(preferences, column(*sources))
        accuracy = frame[frame.coalition == "+".join(sources)].preference_accuracy.mean()
        assert said.startswith(f"accuracy {accuracy:.1%} [") and f"Held-out preference: {said}." in captions
    assert "Held-out preference: the reference, 50% accuracy by definition." in captions
    assert coalition_preference(preferences, column("alpha", "beta", merged=True)) is None  # a merge was not evaluated
