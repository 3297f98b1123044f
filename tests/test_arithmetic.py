"""The arithmetic sampler on the tiny random model with random (non-trivial) LoRA adapters (the
teacher-forced scorer's tests are in test_scoring.py)."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model

from valuation.lm.arithmetic import (
    GenerationRequest,
    SamplingError,
    SamplingSettings,
    check_coalitions,
    coalition_requests,
    new_text,
    row_chunks,
    row_share,
    sample_coalitions,
    stream_coalitions,
)
from valuation.games.coalitions import all_coalitions
from valuation.config import ModelConfig
from valuation.lm.adapters import AdapterError
from valuation.lm.merging import merged_coalition_adapter
from valuation.lm.models import load_model
from valuation.lm.tokens import prompt_ids

SOURCES = [f"s{i}" for i in range(10)]
PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me something about the sea and the mountains, please."}],
    [{"role": "user", "content": "How do plants grow?"}],
]
GREEDY = SamplingSettings(temperature=0, max_new_tokens=6)
SAMPLED = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)


def with_adapters(dtype: str = "float32", layers: list[int] | None = None):
    loaded = load_model(ModelConfig(name="tiny", device="cpu", dtype=dtype))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, layers_to_transform=layers)
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, config, adapter_name=SOURCES[0])
    for name in SOURCES[1:]:
        model.add_adapter(name, config)
    for module in model.modules():  # random adapters strong enough to move the distributions
        if hasattr(module, "lora_B"):
            for name in module.lora_B:
                module.lora_B[name].weight.data.normal_(0, 0.5)
    return model.eval(), loaded.tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads; on a shared 2-core machine they only spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(one_thread):
    return with_adapters()


def tokens(generations):
    return [g.token_ids for g in generations]


# -----------------------------------------------------------------------------
# direct computations, independent of the engine


def model_log_probs(model, ids: list[int], adapter: str | None) -> torch.Tensor:
    """Float32 next-token log-probs at every position of one unpadded sequence under one model."""
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
        else:
            model.set_adapter(adapter)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
    return logits.float().log_softmax(-1)


def brute_force_greedy(model, tokenizer, messages, coalition, steps: int) -> list[int]:
    """Greedy decoding of pi_S, recomputing every model on the whole prefix (no cache, no batch)."""
    ids = prompt_ids(tokenizer, messages)
    out = []
    for _ in range(steps):
        combined = (1 - len(coalition)) * model_log_probs(model, ids, None)[-1]
        for member in coalition:
            combined = combined + model_log_probs(model, ids, member)[-1]
        out.append(int(combined.argmax()))
        ids = ids + out[-1:]
    return out


# -----------------------------------------------------------------------------
# formulas and settings


def test_requests_and_their_chunks():
    requests = coalition_requests(PROMPTS, all_coalitions(["a", "b"]), samples=2)
    assert len(requests) == 3 * 2 * 4
    assert [r.coalition for r in requests[:4]] == [frozenset(), {"a"}, {"b"}, {"a", "b"}]
    assert coalition_requests(PROMPTS[:1], [("b", "a")])[0].coalition == frozenset({"a", "b"})  # any order of names
    # rows per group: 1 for the base and a singleton, |S| + 1 for a larger coalition
    assert row_chunks(requests[:4], max_rows=3) == [[0, 1, 2], [3]]
    assert row_chunks(requests[:4], max_rows=2) == [[0, 1], [2], [3]]  # a group too large for the budget goes alone
    # Rows that own half their layers (the other half run once per group): the pair costs 0.5 + 3 x 0.5.
    assert row_chunks(requests[:4], max_rows=5) == [[0, 1, 2], [3]]
    assert row_chunks(requests[:4], max_rows=5, share=0.5) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("change, word", [
    (dict(temperature=-0.1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_batch_rows=0), "max_batch_rows"),
])
def test_bad_settings_are_user_errors(change, word):
    with pytest.raises(SamplingError, match=word):
        SamplingSettings(**change).validate()


def test_unknown_or_repeated_sources_are_user_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(AdapterError, match="no adapter named nope"):  # on the call, before the stream is iterated
        stream_coalitions(model, tokenizer, [GenerationRequest(frozenset({"nope", "s0"}), PROMPTS[0])], GREEDY)
    with pytest.raises(SamplingError, match="names a source twice"):  # a list of names, as a merge takes
        check_coalitions(model, [["s0", "s0"]])


# -----------------------------------------------------------------------------
# identities: empty coalition = base, singleton = its adapter, larger = brute force


def test_greedy_sampling_matches_each_model_alone_and_brute_force(tiny):
    model, tokenizer = tiny
    coalitions = [(), ("s0",), ("s0", "s1", "s2")]
    requests = coalition_requests(PROMPTS[:2], coalitions)  # prompts of different lengths share a left-padded batch
    settings = SamplingSettings(temperature=0, max_new_tokens=4)
    for generation in sample_coalitions(model, tokenizer, requests, settings):
        expected = brute_force_greedy(model, tokenizer, PROMPTS[generation.prompt_index], generation.coalition, 4)
        assert generation.token_ids == expected, generation.coalition


def test_adapters_on_the_top_layer_share_the_layer_below_and_draw_what_the_whole_model_draws(monkeypatch):
    from valuation.lm import trunk

    model, tokenizer = with_adapters(layers=[1])  # the tiny model's top layer of 2
    assert trunk.shared_depth(model, SOURCES) == 1  # so each group's token runs layer 0 once, for all its rows
    greedy = coalition_requests(PROMPTS[:2], [(), ("s0",), ("s0", "s1", "s2")])
    free = sample_coalitions(model, tokenizer, greedy, GREEDY)
    for generation in free:
        expected = brute_force_greedy(model, tokenizer, PROMPTS[generation.prompt_index], generation.coalition, 6)
        assert generation.token_ids == expected, generation.coalition
    alone = sample_coalitions(model, tokenizer, coalition_requests(PROMPTS[:2], [()]), GREEDY)  # every layer shared
    assert tokens(alone) == [free[0].token_ids, free[3].token_ids]
    # The singleton's second token made an end token: groups end at it and leave the caches, the rest go on.
    end = free[1].token_ids[1]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    ended = sample_coalitions(model, tokenizer, greedy, GREEDY)
    assert ended[1].num_tokens == 2 and ended[1].finished_by_eos
    for before, after in zip(free, ended):
        assert after.token_ids == before.token_ids[:before.token_ids.index(end) + 1 if end in before.token_ids else 6]

    requests = coalition_requests(PROMPTS[:2], all_coalitions(SOURCES[:3]), samples=2)
    settings = SamplingSettings(temperature=1.0, top_p=0.8, top_k=40, max_new_tokens=4, seed=1, max_batch_rows=7)
    assert row_share(model, requests) == 0.5  # the budget's rows count layer 1 per row, layer 0 per group
    shared = tokens(sample_coalitions(model, tokenizer, requests, settings))
    monkeypatch.setattr(trunk, "decoder", lambda model: (_ for _ in ()).throw(trunk.TrunkError("not split")))
    assert row_share(model, requests) == 1.0  # other chunks: the draws do not depend on them
    assert tokens(sample_coalitions(model, tokenizer, requests, settings)) == shared  # every row through every layer
    assert tokens(sample_coalitions(model, tokenizer, greedy, GREEDY)) == tokens(ended)


def test_singleton_and_empty_equal_peft_generate(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([prompt_ids(tokenizer, PROMPTS[1])])
    generations = sample_coalitions(model, tokenizer, coalition_requests(PROMPTS[1:2], [(), ("s3",)]), GREEDY)
    with torch.no_grad():
        with model.disable_adapter():
            base = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        model.set_adapter("s3")
        adapter = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert generations[0].token_ids == base[0, ids.shape[1]:].tolist()
    assert generations[1].token_ids == adapter[0, ids.shape[1]:].tolist()


# -----------------------------------------------------------------------------
# randomness: seeded, and common to every coalition whatever the batch


def test_seeded_sampling_is_deterministic(tiny):
    model, tokenizer = tiny
    requests = coalition_requests(PROMPTS[:2], [(), ("s0", "s1")], samples=2)
    first = sample_coalitions(model, tokenizer, requests, SAMPLED)
    assert tokens(first) == tokens(sample_coalitions(model, tokenizer, requests, SAMPLED))
    other = SamplingSettings(**{**SAMPLED.__dict__, "seed": 4})
    assert tokens(first) != tokens(sample_coalitions(model, tokenizer, requests, other))
    assert first[0].token_ids != first[2].token_ids  # another sample index draws other numbers


def test_draws_do_not_depend_on_batch_or_chunks(tiny):
    model, tokenizer = tiny
    requests = coalition_requests(PROMPTS[:2], [(), ("s0",), ("s1", "s2"), ("s0", "s1", "s2")], samples=2)
    settings = SamplingSettings(temperature=1.0, top_p=0.8, top_k=40, max_new_tokens=4, seed=1)
    together = tokens(sample_coalitions(model, tokenizer, requests, settings))
    chunked = SamplingSettings(**{**settings.__dict__, "max_batch_rows": 5})
    assert tokens(sample_coalitions(model, tokenizer, requests, chunked)) == together
    alone = [sample_coalitions(model, tokenizer, [request], settings)[0].token_ids for request in requests[::5]]
    assert alone == together[::5]


# -----------------------------------------------------------------------------
# ends, streaming, stopping, threads


def test_a_group_that_emits_eos_stops_while_others_continue(tiny):
    model, tokenizer = tiny
    requests = coalition_requests(PROMPTS[:1], [(), ("s0",), ("s0", "s1")])
    settings = SamplingSettings(temperature=0, max_new_tokens=8)
    free = tokens(sample_coalitions(model, tokenizer, requests, settings))
    # Make the token the singleton picks at step 3 an end-of-sequence token (it appears nowhere else).
    end = free[1][2]
    assert all(end not in run for run in (free[0], free[2], free[1][:2]))
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    try:
        updates = list(stream_coalitions(model, tokenizer, requests, settings))
    finally:
        model.generation_config.eos_token_id = original
    finished = {i: g for update in updates for i, g in update.finished.items()}
    assert finished[1].token_ids == free[1][:3] and finished[1].finished_by_eos and finished[1].num_tokens == 3
    assert [finished[i].token_ids for i in (0, 2)] == [free[0], free[2]]
    assert not finished[0].finished_by_eos and finished[0].num_tokens == 8
    assert sum(1 in update.pieces for update in updates) == 3 and len(updates) == 8


def test_streamed_pieces_add_up_to_the_text(tiny):
    model, tokenizer = tiny
    requests = coalition_requests(PROMPTS[:2], [(), ("s0", "s1")])
    text = {i: "" for i in range(len(requests))}
    finished = {}
    for update in stream_coalitions(model, tokenizer, requests, SAMPLED):
        for i, piece in update.pieces.items():
            text[i] += piece
        finished.update(update.finished)
    assert all(text[i] == finished[i].text and finished[i].seconds > 0 for i in text)


def test_incremental_text_keeps_multibyte_characters_whole(tiny):
    _, tokenizer = tiny
    ids = tokenizer("Grüße aus 東京 🌊!", add_special_tokens=False).input_ids
    emitted, pieces = "", []
    for end in range(1, len(ids) + 1):
        piece, emitted = new_text(tokenizer.decode(ids[:end]), emitted)
        pieces.append(piece)
    assert "".join(pieces) == "Grüße aus 東京 🌊!" and all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # some token ended inside a character


def test_stop_event_ends_the_generation(tiny):
    model, tokenizer = tiny
    stop = threading.Event()
    settings = SamplingSettings(max_new_tokens=50, max_batch_rows=2)
    requests = coalition_requests(PROMPTS[:1], [(), ("s0",), ("s0", "s1")])
    updates = []
    for update in stream_coalitions(model, tokenizer, requests, settings, stop_event=stop):
        updates.append(update)
        stop.set()
    # The first chunk (two one-row groups) ends after its second token; the pair's chunk never starts.
    assert len(updates) == 2 and set(updates[-1].finished) == {0, 1}
    assert all(g.num_tokens == 2 and not g.finished_by_eos for g in updates[-1].finished.values())


def test_concurrent_generations_do_not_disturb_each_other(tiny):
    model, tokenizer = tiny
    jobs = [coalition_requests(PROMPTS[:2], [(), ("s0", "s1")]),
            coalition_requests(PROMPTS[1:], [("s2",), ("s3", "s4")])]
    alone = [tokens(sample_coalitions(model, tokenizer, job, SAMPLED)) for job in jobs]
    results = [None, None]

    def run(k):
        results[k] = tokens(sample_coalitions(model, tokenizer, jobs[k], SAMPLED))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == alone


# -----------------------------------------------------------------------------
# numerics


def test_ten_adapters_with_top_k_and_top_p_stay_finite(tiny):
    model, tokenizer = tiny
    everyone = tuple(SOURCES)
    settings = SamplingSettings(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=5)
    requests = coalition_requests(PROMPTS[:2], [everyone, tuple(SOURCES[:5])])
    generations = sample_coalitions(model, tokenizer, requests, settings)
    assert all(g.num_tokens == 5 and all(0 <= t < len(tokenizer) for t in g.token_ids) for g in generations)


def test_bfloat16_model_samples():
    model, tokenizer = with_adapters("bfloat16")
    generations = sample_coalitions(model, tokenizer, coalition_requests(PROMPTS[:1], [("s0", "s1", "s2", "s3")]), SAMPLED)
    assert generations[0].num_tokens == 6


# -----------------------------------------------------------------------------
# ablation: weight-space merge


def test_cat_merge_sums_the_members_weight_updates(tiny):
    model, tokenizer = tiny
    name = merged_coalition_adapter(model, ("s0", "s1"))
    assert name == "merge:s0+s1" and merged_coalition_adapter(model, ("s0", "s1")) == name
    assert merged_coalition_adapter(model, ("s2",)) == "s2"
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and name in m.lora_A]
    assert layers
    for layer in layers:
        expected = layer.get_delta_weight("s0") + layer.get_delta_weight("s1")
        torch.testing.assert_close(layer.get_delta_weight(name), expected, rtol=1e-5, atol=1e-6)
    merged = sample_coalitions(model, tokenizer, coalition_requests(PROMPTS[:1], [(name,), ("s0", "s1")]), GREEDY)
    assert all(g.num_tokens == 6 for g in merged)
    with pytest.raises(SamplingError):
        merged_coalition_adapter(model, ())
