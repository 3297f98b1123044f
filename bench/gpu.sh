#!/usr/bin/env bash
# bench/gpu.sh: the `paper` training preset end to end on one CUDA GPU, plus the sampler benchmarks,
# with the wall time of every step. One prepared command, meant to fit about 10 minutes of GPU time.
#
#     bench/gpu.sh                                      # from the repository root, on a machine with a CUDA GPU
#     GPU_BENCH_OUT=/some/folder bench/gpu.sh           # results elsewhere (default: $OUT when set, else runs/gpu-bench)
#
# What it runs, in order (every job through `python -m valuation`, the local backend, one GPU):
#   1. sources   a new run on the four offline HH-RLHF sources (the default data: ../shared/data, or
#                VALUATION_DATA_DIR), on the embedded base model (SmolLM2-135M-Instruct)
#   2. configure what the `sources` command has no flag for, set in the run's config.yaml through the
#                library: the model's device, and optionally the reward models' caps
#   3. train     `train --preset paper`: DPO, LoRA r8 on the attention projections of all 30 layers
#                (TRL's DPOTrainer), 512 tokens (384 of prompt), 3 epochs, one adapter per source,
#                then each adapter's held-out verdict
#   4. rewards   the offline reward models (Bradley-Terry heads on the base model's hidden states, with
#                their bootstrap heads); the paper's Ray2333 hub models need the internet
#   5. evaluate  `evaluate --preset paper`: pooled, 8 responses per prompt and anchor, 256 new tokens
#   6. shapley   the values (table into the log, JSON into the output folder); 7. report (HTML)
#   8. bench/arithmetic_throughput.py on the GPU (the sampler against one model copy per term)
#   9. bench/pooled_vs_direct.py --sources --demo (the demo's trained adapters, real model, pooled and
#      direct side by side)
#
# CAPS, to fit about 10 minutes. The paper preset trains on every training pair of a source (at the
# default split 1,159 / 1,158 / 590 / 1,352, 4,259 in all, x 3 epochs at 512 tokens) and evaluates
# 200 prompts (x 48 pooled responses x 256 tokens at n = 4). This script keeps every other paper
# setting but caps
#   - training pairs per source at GPU_BENCH_MAX_PAIRS=512 (train --max-pairs; 0 = the preset's "all"):
#     2,048 pairs in all, 48% of the preset's;
#   - evaluation prompts at GPU_BENCH_PROMPTS=64 (evaluate --prompts), 32% of the preset's 200 (which
#     the split records GPU_BENCH_EVAL_PROMPTS=256 of them).
# These caps are guesses from the model's size (135M parameters), NOT measured on a GPU: this script
# has so far run only on a CPU with the tiny settings of bench/README.md. Set GPU_BENCH_MAX_PAIRS=0
# GPU_BENCH_PROMPTS=200 for the uncapped paper preset (expect longer than 10 minutes). Not run here:
# `validate` (the Validate page's experiments). Each step's time includes its process's start-up and
# model load.
#
# Every knob is an environment variable with a default (an empty one keeps the preset's value):
#   GPU_BENCH_PYTHON        .venv/bin/python     the interpreter (needs requirements.txt with a CUDA torch)
#   GPU_BENCH_OUT           $OUT, else runs/gpu-bench   timings.tsv, timings.md, machine.txt, gpu.log,
#                                                gpu-samples.txt, shapley.json, report.html (7 files)
#   GPU_BENCH_RUN           runs/gpu-bench/run   the run directory (kept out of $OUT: adapters are large)
#   GPU_BENCH_DEVICE        cuda                 'cuda' checks that torch sees a GPU first and fails if not;
#                                                'cpu' for a smoke test on a machine without one
#   GPU_BENCH_MODEL         embedded             the base model of a new run (VALUATION_MODEL): 'tiny' for a smoke test
#   GPU_BENCH_DATA_DIR      (CLI default)        the offline data folder (sources --data-dir)
#   GPU_BENCH_SOURCES       the four HH-RLHF subsets
#   GPU_BENCH_EVAL_PROMPTS  256                  evaluation prompts recorded in the split (data.eval_prompts)
#   GPU_BENCH_MAX_PAIRS     512                  train --max-pairs
#   GPU_BENCH_EPOCHS, GPU_BENCH_MAX_LENGTH, GPU_BENCH_MAX_PROMPT_LENGTH, GPU_BENCH_BATCH_SIZE
#                           (preset: 3, 512, 384, 8)  train --epochs/--max-length/--max-prompt-length/--batch-size
#   GPU_BENCH_PROMPTS       64                   evaluate --prompts
#   GPU_BENCH_POOL_PER_ANCHOR, GPU_BENCH_MAX_NEW_TOKENS, GPU_BENCH_CHUNK_PROMPTS, GPU_BENCH_MAX_BATCH_ROWS
#                           (preset: 8, 256, 16, 512)  evaluate --pool-per-anchor/--max-new-tokens/...
#   GPU_BENCH_REWARD_PAIRS, GPU_BENCH_HEAD_BOOTSTRAPS
#                           (run default: 2000, 20)  rewards.max_pairs and rewards.head_bootstraps in config.yaml
#   GPU_BENCH_THROUGHPUT_ARGS  "--adapters 4 --prompts 16 --new-tokens 64 --dtype bfloat16 --max-batch-rows 512"
#                           (the script adds --device; empty string: skip the step)
#   GPU_BENCH_POOLED_ARGS   "--sources --demo"   bench/pooled_vs_direct.py (empty string: skip the step)
#   GPU_BENCH_REPORT        1                    0 skips the HTML report
#
# Resumable: a second pass keeps the run (no new split when split.json exists), and train, rewards and
# evaluate resume (finished adapters, reward models and evaluation chunks are kept); the two
# benchmarks run again. Timings are appended to timings.tsv with the pass's id. Any failing step
# stops the script (set -euo pipefail) with its name, after writing the timings so far.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${GPU_BENCH_PYTHON:-.venv/bin/python}
OUT_DIR=${GPU_BENCH_OUT:-${OUT:-runs/gpu-bench}}
RUN=${GPU_BENCH_RUN:-runs/gpu-bench/run}
DEVICE=${GPU_BENCH_DEVICE:-cuda}
MODEL=${GPU_BENCH_MODEL:-embedded}
DATA_DIR=${GPU_BENCH_DATA_DIR:-}
SOURCES=${GPU_BENCH_SOURCES:-harmless-base helpful-base helpful-online helpful-rejection-sampled}
EVAL_PROMPTS=${GPU_BENCH_EVAL_PROMPTS:-256}
MAX_PAIRS=${GPU_BENCH_MAX_PAIRS:-512}
EPOCHS=${GPU_BENCH_EPOCHS:-}
MAX_LENGTH=${GPU_BENCH_MAX_LENGTH:-}
MAX_PROMPT_LENGTH=${GPU_BENCH_MAX_PROMPT_LENGTH:-}
BATCH_SIZE=${GPU_BENCH_BATCH_SIZE:-}
PROMPTS=${GPU_BENCH_PROMPTS:-64}
POOL_PER_ANCHOR=${GPU_BENCH_POOL_PER_ANCHOR:-}
MAX_NEW_TOKENS=${GPU_BENCH_MAX_NEW_TOKENS:-}
CHUNK_PROMPTS=${GPU_BENCH_CHUNK_PROMPTS:-}
MAX_BATCH_ROWS=${GPU_BENCH_MAX_BATCH_ROWS:-}
REWARD_PAIRS=${GPU_BENCH_REWARD_PAIRS:-}
HEAD_BOOTSTRAPS=${GPU_BENCH_HEAD_BOOTSTRAPS:-}
THROUGHPUT_ARGS=${GPU_BENCH_THROUGHPUT_ARGS-"--adapters 4 --prompts 16 --new-tokens 64 --dtype bfloat16 --max-batch-rows 512"}
POOLED_ARGS=${GPU_BENCH_POOLED_ARGS-"--sources --demo"}
REPORT=${GPU_BENCH_REPORT:-1}

export PYTHONUNBUFFERED=1
case "$MODEL" in embedded | tiny) export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} ;; esac  # nothing to fetch: no network waits
mkdir -p "$OUT_DIR" "$(dirname "$RUN")"
LOG=$OUT_DIR/gpu.log
TIMINGS=$OUT_DIR/timings.tsv
SAMPLES=$OUT_DIR/gpu-samples.txt
PASS=$(date -u +%Y%m%dT%H%M%SZ)
[ -s "$TIMINGS" ] || printf 'pass\tstep\tstart\tend\tseconds\tstatus\n' >"$TIMINGS"

# `optional FLAG VALUE ...`: each flag and its value, one a line, leaving out those whose value is
# empty (the preset's).
optional() { while [ $# -gt 0 ]; do if [ -n "$2" ]; then printf '%s\n%s\n' "$1" "$2"; fi; shift 2; done; }

# GPU samples (epoch seconds, memory used in MiB, utilisation %), one a second, for each step's peak.
SAMPLER_PID=
if command -v nvidia-smi >/dev/null 2>&1; then
    (while true; do
        printf '%s, %s\n' "$(date +%s)" "$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits | head -n 1)"
        sleep 1
    done) >>"$SAMPLES" 2>/dev/null &
    SAMPLER_PID=$!
fi

table() {  # the markdown table of this pass's steps, with each step's GPU peak where sampled
    awk -F'\t' -v pass="$PASS" -v samples="$SAMPLES" '
        BEGIN { while ((getline line < samples) > 0) { split(line, f, ", "); n++; t[n] = f[1]; mem[n] = f[2]; util[n] = f[3] } }
        NR > 1 && $1 == pass {
            peak = ""; usum = 0; uc = 0
            for (i = 1; i <= n; i++) if ($5 > 0 && t[i] >= int($3) && t[i] <= $4 + 1) {
                if (peak == "" || mem[i] + 0 > peak + 0) peak = mem[i]; usum += util[i]; uc++ }
            rows[++r] = sprintf("| %s | %.1f | %s | %s | %s |", $2, $5, $6, peak == "" ? "n/a" : peak,
                                uc ? sprintf("%.0f", usum / uc) : "n/a")
            total += $5
        }
        END {
            print "| step | seconds | status | peak GPU memory (MiB) | mean GPU utilisation (%) |"
            print "| --- | --- | --- | --- | --- |"
            for (i = 1; i <= r; i++) print rows[i]
            printf "| total | %.1f | | | |\n", total
        }' "$TIMINGS"
}

finish() {
    local status=$?
    if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    {
        echo "# bench/gpu.sh, pass $PASS (exit status $status)"
        echo
        table
    } >"$OUT_DIR/timings.md"
    echo
    cat "$OUT_DIR/timings.md"
    if [ "$status" -ne 0 ]; then
        echo "bench/gpu.sh FAILED (exit status $status): see $LOG" >&2
    fi
    echo "results in $OUT_DIR (the run in $RUN)"
}
trap finish EXIT

# `step NAME COMMAND...`: run, log, time; stop the script if it fails.
step() {
    local name=$1 start end status=0
    shift
    echo "=== $name: $*" | tee -a "$LOG"
    start=$(date +%s.%N)
    "$@" 2>&1 | tee -a "$LOG" || status=$?
    end=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\t%.1f\t%s\n' "$PASS" "$name" "$start" "$end" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" \
        "$([ "$status" -eq 0 ] && echo ok || echo "failed ($status)")" >>"$TIMINGS"
    if [ "$status" -ne 0 ]; then
        echo "=== $name FAILED with exit status $status" | tee -a "$LOG" >&2
        exit "$status"
    fi
}
skipped() { printf '%s\t%s\t%s\t%s\t0.0\t%s\n' "$PASS" "$1" "$(date +%s)" "$(date +%s)" "$2" >>"$TIMINGS"; }

machine() {
    echo "bench/gpu.sh pass $PASS, $(date -u), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "$(git status --porcelain 2>/dev/null | grep -q . && echo '(working tree modified)')"
    echo "settings: device=$DEVICE model=$MODEL run=$RUN sources=[$SOURCES] eval_prompts=$EVAL_PROMPTS" \
        "max_pairs=$MAX_PAIRS epochs=${EPOCHS:-preset} max_length=${MAX_LENGTH:-preset}" \
        "max_prompt_length=${MAX_PROMPT_LENGTH:-preset} batch_size=${BATCH_SIZE:-preset} prompts=$PROMPTS" \
        "pool_per_anchor=${POOL_PER_ANCHOR:-preset} max_new_tokens=${MAX_NEW_TOKENS:-preset}" \
        "chunk_prompts=${CHUNK_PROMPTS:-preset} max_batch_rows=${MAX_BATCH_ROWS:-preset}" \
        "reward_pairs=${REWARD_PAIRS:-run default} head_bootstraps=${HEAD_BOOTSTRAPS:-run default}" \
        "throughput=[$THROUGHPUT_ARGS] pooled=[$POOLED_ARGS]"
    "$PY" -c 'import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")'
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not present"; fi
}
echo "##### bench/gpu.sh pass $PASS" >>"$LOG"
machine | tee "$OUT_DIR/machine.txt" | tee -a "$LOG"
check_cuda() {
    "$PY" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device: install a CUDA build of torch "
         "(requirements.txt pins the CPU one), or set GPU_BENCH_DEVICE=cpu for a smoke test")'
}
if [ "$DEVICE" != cpu ]; then step cuda check_cuda; fi

# 1. The run and its split (a second pass keeps them).
create_run() {
    local args=(--run "$RUN" --new --sources $SOURCES --eval-prompts "$EVAL_PROMPTS")
    [ -z "$DATA_DIR" ] || args+=(--data-dir "$DATA_DIR")
    VALUATION_MODEL=$MODEL "$PY" -m valuation sources "${args[@]}"
}
if [ -f "$RUN/split.json" ]; then skipped sources "kept (resumed)"; else step sources create_run; fi

# 2. What `sources` has no flag for: the model's device and the reward models' caps. Idempotent.
configure() {
    GPU_BENCH_RUN=$RUN "$PY" - <<'PYTHON'
import os
from valuation.runs import Run

run = Run.at(os.environ["GPU_BENCH_RUN"])
config = run.load_config()
config.model.device = os.environ["DEVICE"]
if os.environ["REWARD_PAIRS"]:
    config.rewards.max_pairs = int(os.environ["REWARD_PAIRS"])
if os.environ["HEAD_BOOTSTRAPS"]:
    config.rewards.head_bootstraps = int(os.environ["HEAD_BOOTSTRAPS"])
run.save_config(config)
print(f"model {config.model.name} on {config.model.device}; data.eval_prompts {config.data.eval_prompts}; "
      f"rewards.max_pairs {config.rewards.max_pairs}, rewards.head_bootstraps {config.rewards.head_bootstraps}")
PYTHON
}
export DEVICE REWARD_PAIRS HEAD_BOOTSTRAPS
step configure configure

# 3-7. The jobs.
mapfile -t TRAIN_FLAGS < <(optional --max-pairs "$MAX_PAIRS" --epochs "$EPOCHS" --max-length "$MAX_LENGTH" \
    --max-prompt-length "$MAX_PROMPT_LENGTH" --batch-size "$BATCH_SIZE")
mapfile -t EVAL_FLAGS < <(optional --prompts "$PROMPTS" --pool-per-anchor "$POOL_PER_ANCHOR" \
    --max-new-tokens "$MAX_NEW_TOKENS" --chunk-prompts "$CHUNK_PROMPTS" --max-batch-rows "$MAX_BATCH_ROWS")
step train "$PY" -m valuation train --run "$RUN" --preset paper "${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}"
step rewards "$PY" -m valuation rewards --run "$RUN"
step evaluate "$PY" -m valuation evaluate --run "$RUN" --preset paper "${EVAL_FLAGS[@]+"${EVAL_FLAGS[@]}"}"
shapley_json() { "$PY" -m valuation shapley --run "$RUN" --format json >"$OUT_DIR/shapley.json"; }
step shapley "$PY" -m valuation shapley --run "$RUN"
step shapley-json shapley_json
if [ "$REPORT" = 1 ]; then step report "$PY" -m valuation report --run "$RUN" --out "$OUT_DIR/report.html"; fi

# 8-9. The sampler benchmarks.
if [ -n "$THROUGHPUT_ARGS" ]; then
    # shellcheck disable=SC2086  # the arguments are words
    step arithmetic-throughput "$PY" bench/arithmetic_throughput.py $THROUGHPUT_ARGS --device "$DEVICE"
fi
if [ -n "$POOLED_ARGS" ]; then
    # shellcheck disable=SC2086
    step pooled-vs-direct "$PY" bench/pooled_vs_direct.py $POOLED_ARGS
fi
