"""Benchmark (not a test): sampling every coalition of n adapters, two ways, on the embedded model.

(a) this project's sampler: one base model, n LoRA adapters in one PeftModel, all 2^n coalitions
    decoded together in mixed-adapter batches (chunked to --max-batch-rows rows).
(b) the way model-arithmetic libraries do it: one full model per term (each adapter merged into
    its own deep copy with merge_and_unload), one coalition at a time, batched over prompts, each
    model with its own KV cache; log-probabilities combined in float32 with the same formula and
    tokens drawn by the same function from the same seeded generators.

The adapters are random non-trivial LoRA adapters (r=8 on q/k/v/o): throughput and memory do not
depend on what an adapter learned. Same prompts, lengths and dtype on both sides; each side runs in
its own subprocess (this script re-invoked with --side) so that its peak RSS is its own.

    .venv/bin/python bench/arithmetic_throughput.py [--adapters 4] [--prompts 4] [--new-tokens 32]
    .venv/bin/python bench/arithmetic_throughput.py --device cuda --dtype bfloat16   # on a GPU (bench/gpu.sh)

On a GPU each side also reports its peak GPU memory (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from valuation.lm.arithmetic import (  # noqa: E402
    SamplingSettings,
    coalition_requests,
    draw_tokens,
    group_generator,
    sample_coalitions,
    stop_token_ids,
)
from valuation.games.coalitions import BASE, all_coalitions, formula_terms  # noqa: E402
from valuation.lm.forward import left_pad  # noqa: E402
from valuation.config import ModelConfig  # noqa: E402
from valuation.lm.models import load_model  # noqa: E402
from valuation.lm.tokens import prompt_ids  # noqa: E402

PROMPTS = [
    "What is a good way to learn to cook?",
    "Explain why the sky is blue.",
    "Write a short poem about autumn.",
    "How do I keep my houseplants alive?",
    "What should I pack for a weekend hike?",
    "Give me three tips for a job interview.",
    "Why do cats purr?",
    "How does a bicycle stay upright?",
]


def with_random_adapters(model: torch.nn.Module, count: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    names = [f"source{i}" for i in range(count)]
    torch.manual_seed(0)
    peft = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, config)
    return peft.eval(), names


def side_a(args, loaded, prompts) -> Callable[[], list[list[int]]]:
    """The arithmetic sampler: every coalition in one mixed-adapter batch per step."""
    model, names = with_random_adapters(loaded.model, args.adapters)
    settings = SamplingSettings(max_new_tokens=args.new_tokens, max_batch_rows=args.max_batch_rows)
    requests = coalition_requests(prompts, all_coalitions(names))
    return lambda: [g.token_ids for g in sample_coalitions(model, loaded.tokenizer, requests, settings)]


def side_b(args, loaded, prompts) -> Callable[[], list[list[int]]]:
    """One merged model copy per term; coalitions one after another, each batched over the prompts."""
    peft, names = with_random_adapters(loaded.model, args.adapters)
    models = {name: copy.deepcopy(peft).merge_and_unload(adapter_names=[name]).eval() for name in names}
    models[BASE] = peft.unload().eval()
    settings = SamplingSettings(max_new_tokens=args.new_tokens)
    stops = stop_token_ids(loaded.model, loaded.tokenizer)

    def generate() -> list[list[int]]:
        by_coalition = {c: generate_one_coalition(models, formula_terms(c), loaded.tokenizer, prompts, settings, stops)
                        for c in all_coalitions(names)}
        # in the order of coalition_requests: prompt-major, then coalition
        return [by_coalition[c][p] for p in range(len(prompts)) for c in all_coalitions(names)]

    return generate


@torch.no_grad()
def generate_one_coalition(models, terms, tokenizer, prompts, settings, stops) -> list[list[int]]:
    input_ids, mask, positions = left_pad([prompt_ids(tokenizer, m) for m in prompts], tokenizer.pad_token_id)
    device = next(next(iter(models.values())).parameters()).device
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    generators = [group_generator(settings.seed, p, 0) for p in range(len(prompts))]
    caches = {name: None for name, _ in terms}
    tokens = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    next_position = positions[:, -1:] + 1
    for step in range(settings.max_new_tokens):
        # log pi_S = sum of coefficient * log pi_term, float32, renormalised; finished rows keep decoding (padding).
        combined = 0
        for name, coef in terms:
            out = models[name](input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=caches[name],
                               use_cache=True, logits_to_keep=1)
            caches[name] = out.cache
            combined = combined + coef * out.logits[:, -1].float().log_softmax(-1)
        drawn = draw_tokens(combined.log_softmax(-1), settings, generators)
        for p, token in enumerate(drawn.tolist()):
            if not done[p]:
                tokens[p].append(token)
                done[p] = token in stops
        if done.all():
            break
        input_ids, positions, next_position = drawn[:, None], next_position, next_position + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return tokens


def run_side(args) -> None:
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
    loaded_rss = peak_rss_mb()
    prompts = [[{"role": "user", "content": text}] for text in (PROMPTS * 8)[:args.prompts]]
    generate = (side_a if args.side == "a" else side_b)(args, loaded, prompts)  # setup is not timed
    start = time.perf_counter()
    token_ids = generate()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in token_ids)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if loaded.model.device.type == "cuda" else None
    print(json.dumps({"side": args.side, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "peak_rss_mb": peak_rss_mb(), "base_loaded_rss_mb": loaded_rss, "peak_gpu_mb": gpu,
                      "token_ids": token_ids}))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N' (default cpu, as measured below)")
    parser.add_argument("--model", default="embedded", help="base model: 'embedded' (measured) or 'tiny' (a smoke test)")
    parser.add_argument("--max-batch-rows", type=int, default=SamplingSettings.max_batch_rows)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per side (1: stable on a shared machine, where 2 threads spin-wait)")
    parser.add_argument("--side", choices=["a", "b"], help="run one side only, print its JSON (used internally)")
    args = parser.parse_args()
    if args.side:
        return run_side(args)

    results = {}
    for side in "ab":
        command = [sys.executable, __file__, "--side", side] + sys.argv[1:]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(output.strip().splitlines()[-1])
    a, b = results["a"], results["b"]
    groups = len(a["token_ids"])
    same = sum(x == y for x, y in zip(a["token_ids"], b["token_ids"]))
    print(f"{args.adapters} adapters, {2 ** args.adapters} coalitions x {args.prompts} prompts, "
          f"{args.new_tokens} new tokens, {args.model} model on {args.device}, {args.dtype}, "
          f"max batch rows {args.max_batch_rows}, {args.threads} thread(s)")
    for name, r in (("(a) arithmetic sampler, one model", a), ("(b) one model copy per term", b)):
        gpu = f" peak GPU {r['peak_gpu_mb']:7.0f} MB" if r.get("peak_gpu_mb") is not None else ""
        print(f"{name:36s} {r['tokens']:6d} tokens {r['seconds']:7.1f} s {r['tokens_per_s']:7.1f} tok/s "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB{gpu}")
    print(f"throughput (a)/(b): {a['tokens_per_s'] / b['tokens_per_s']:.2f}x   "
          f"memory (b)/(a): {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x   "
          + (f"GPU memory (b)/(a): {b['peak_gpu_mb'] / a['peak_gpu_mb']:.2f}x   " if a.get("peak_gpu_mb") else "") +
          f"identical responses: {same}/{groups} (same seeds; differences are float rounding near ties)")
    print(f"peak RSS right after loading the base model (both sides): {a['base_loaded_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
