#!/usr/bin/env bash
# The GPU paths end to end (issue #22), in one command, with one Markdown summary holding every number:
#
#   scripts/gpu_check.sh [OUT]     # default gpu-check/<UTC time>/; writes OUT/summary.md, logs beside it
#
#   1. pytest -m gpu
#   2. bench time: ResNet-20/56 and 18/50 (torchvision's 18/50 beside, --reference), fp32 and bf16, eager and
#      --cuda-graph
#   3. bench run of one short ResNet-20 configuration per mode; its first epochs must agree across modes
#      within scripts/gpu_check.py's TOLERANCE; then streamed 224 steps of ResNet-18 (scripts/stream_step.py:
#      generated JPEGs read by bench.data.streaming's workers, bf16, channels-last)
#   4. bench run --devices over every visible GPU (each run's config.json names the GPU it ran on)
#   5. torchrun with NCCL and --sync-bn against one process when there are two GPUs or more; with one GPU,
#      that two ranks on it are refused in one line
#   6. bench time --compile of the same nets and precisions, net by net, as long as the time budget lasts
#      (each compile takes tens of seconds; GPU_CHECK_FULL=1 compiles them all, whatever it takes)
#
# Sized for under 8 minutes on one H100 (an estimate: this script has not run on a GPU yet; it stops
# starting new parts after GPU_CHECK_MINUTES, default 7). Without a GPU it runs the CPU parts it can
# (about two minutes), says in the summary what it skipped, and exits 0. With a GPU it exits 1 if any part
# failed or the modes disagree. A failing part does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.md
python=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's bench
budget=$(( ${GPU_CHECK_MINUTES:-7} * 60 ))
started=$SECONDS
failed=0
skipped=()
gpus=$("$python" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
bench=("$python" -m bench)
data=(--dataset synthetic --data-dir "$out/data")
# One short ResNet-20 configuration (paper width 16), the same run_id in every mode.
short=(run --depths 20 --arch residual --preset quick --width 16 --epochs 2 --train-subset 5000 --test-subset 1000
       --batch-size 128 --no-progress "${data[@]}")

left() { echo $(( budget - (SECONDS - started) )); }

# part NAME COMMAND...: run it with its output in NAME.log; one line in the parts table, whatever happens.
part() {
    local name=$1 start=$SECONDS status
    shift
    if timeout 600 "$@" >"$out/$name.log" 2>&1; then status=ok; else status="**failed** (exit $?)"; failed=1; fi
    printf '| %s | %s | %d s | `%s` |\n' "$name" "$status" $(( SECONDS - start )) "$*" >>"$out/parts.md"
}

# expect_refusal NAME FRAGMENT COMMAND...: the command must fail with FRAGMENT in its output (exit 2).
expect_refusal() {
    local name=$1 fragment=$2 start=$SECONDS status code
    shift 2
    timeout 300 "$@" >"$out/$name.log" 2>&1
    code=$?
    if (( code != 0 )) && grep -q -- "$fragment" "$out/$name.log"; then status="ok (refused, exit $code)"
    else status="**failed** (exit $code, no \"$fragment\")"; failed=1; fi
    printf '| %s | %s | %d s | `%s` |\n' "$name" "$status" $(( SECONDS - start )) "$*" >>"$out/parts.md"
}

skip() { skipped+=("$*"); }

printf '| part | result | time | command |\n|---|---|---|---|\n' >"$out/parts.md"
: >"$out/sections.md"
section() { printf '\n## %s\n\n' "$1" >>"$out/sections.md"; }

# 1. The GPU tests (on a machine without one they are all skipped: the count says so).
part pytest-gpu "$python" -m pytest -m gpu -q -p no:cacheprovider -rs
section "pytest -m gpu"
tail -n 15 "$out/pytest-gpu.log" | sed 's/^/    /' >>"$out/sections.md"

if (( gpus > 0 )); then
    device=(--device cuda)
    modes=(eager cuda-graph compile)
else
    device=(--device cpu)
    modes=(eager compile)
    skip "every CUDA part: no CUDA GPU is visible to torch here"
    skip "bench time on a GPU (ResNet-20/56, 18/50, torchvision's beside; fp32 and bf16; eager, --compile, --cuda-graph)"
    skip "--cuda-graph (CUDA only), bf16 on a GPU, --devices over GPUs, torchrun with NCCL"
fi
flag() { case $1 in compile) echo --compile ;; cuda-graph) echo --cuda-graph ;; esac; }

# 2. bench time.
if (( gpus > 0 )); then
    for mode in eager cuda-graph; do
        # shellcheck disable=SC2046  # flag is one word or none
        part "time-$mode" "${bench[@]}" time --depths 20 56 18 50 --arch residual --reference --precision fp32 bf16 \
            "${device[@]}" $(flag "$mode") --results "$out/time" --no-progress
    done
else
    # The same code path on the CPU, small: ResNet-20 at batch 8.
    part time-eager-cpu "${bench[@]}" time --depths 20 --arch residual --batch-size 8 --device cpu \
        --results "$out/time" --no-progress
fi
# 3. One short run per mode; the first epochs must agree.
if (( gpus == 0 )); then  # a CPU stand-in that ends in a minute or two on two cores
    short=(run --depths 8 --arch residual --preset quick --width 4 --epochs 2 --train-subset 1024 --test-subset 256
           --batch-size 64 --no-progress --threads 2 "${data[@]}")
fi
compared=()
for mode in "${modes[@]}"; do
    # shellcheck disable=SC2046
    part "run-$mode" "${bench[@]}" "${short[@]}" "${device[@]}" $(flag "$mode") --results "$out/run-$mode"
    compared+=("$mode=$out/run-$mode")
done
section "bench run, one configuration per mode: the first epochs"
"$python" scripts/gpu_check.py compare --epochs 2 "${compared[@]}" >>"$out/sections.md" 2>&1 || failed=1
part stream-step "$python" scripts/stream_step.py "${device[@]}"
section "streamed 224 steps (scripts/stream_step.py)"
tail -n 1 "$out/stream-step.log" | sed 's/^/    /' >>"$out/sections.md"

# 4. --devices over the visible GPUs, and 5. torchrun.
if (( gpus > 0 )); then
    visible=$(seq -s, 0 $(( gpus - 1 )))
    part devices "${bench[@]}" run --depths 8 14 20 --arch residual --seeds 0 1 --preset quick --epochs 1 \
        --train-subset 2048 --test-subset 512 --no-progress "${data[@]}" "${device[@]}" --devices "$visible" \
        --results "$out/devices"
    section "bench run --devices $visible"
    "$python" scripts/gpu_check.py runs "$out/devices" >>"$out/sections.md" 2>&1 || failed=1
fi
torchrun=("$python" -m torch.distributed.run --standalone --nproc-per-node 2 -m bench)
ddp=(run --depths 20 --arch residual --preset quick --width 16 --epochs 1 --train-subset 4096 --test-subset 1000
     --batch-size 128 --sync-bn --no-progress "${data[@]}")
if (( gpus >= 2 )); then
    part ddp-one-process "${bench[@]}" "${ddp[@]}" --device cuda --devices 0 --results "$out/ddp-1"
    part ddp-nccl-two-ranks "${torchrun[@]}" "${ddp[@]}" --device cuda --results "$out/ddp-2"
    section "torchrun, NCCL, two ranks, --sync-bn, against one process (same global batch)"
    "$python" scripts/gpu_check.py compare --epochs 1 "one-process=$out/ddp-1" "two-ranks=$out/ddp-2" \
        >>"$out/sections.md" 2>&1 || failed=1
elif (( gpus == 1 )); then
    expect_refusal ddp-two-ranks-one-gpu "start at most 1 processes per node" "${torchrun[@]}" "${ddp[@]}" \
        --device cuda --results "$out/ddp-refused"
    skip "torchrun with NCCL over two GPUs: one GPU here (checked instead: two ranks on it are refused in one line)"
else
    skip "torchrun with NCCL: no GPU (tests/test_distributed.py runs two gloo ranks on the CPU)"
fi

# 6. bench time --compile, net by net, last: each takes tens of seconds to compile (forward, and forward with
# backward), so the matrix goes on only while the budget lasts (GPU_CHECK_FULL=1: all of it).
if (( gpus > 0 )); then
    for depth in 20 18 56 50; do
        for precision in fp32 bf16; do
            if [[ -z ${GPU_CHECK_FULL:-} ]] && (( $(left) < 120 )); then
                skip "bench time --compile ResNet-$depth $precision: the time budget was spent (GPU_CHECK_FULL=1 runs it)"
                continue
            fi
            part "time-compile-$depth-$precision" "${bench[@]}" time --depths "$depth" --arch residual --reference \
                --precision "$precision" "${device[@]}" --compile --results "$out/time" --no-progress
        done
    done
fi
section "bench time (every row)"
"$python" scripts/gpu_check.py timing "$out/time" >>"$out/sections.md" 2>&1 || failed=1

{
    echo "# scripts/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- machine: $(hostname); GPUs visible to torch: $gpus"
    if (( gpus > 0 )) && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/- GPU /'
    fi
    "$python" -c "import torch; print(f'- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')"
    echo "- commit: $(git rev-parse --short=12 HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "- took $(( SECONDS - started )) s; logs: $out/*.log"
    echo
    echo "## Parts"
    echo
    cat "$out/parts.md"
    echo
    echo "## Skipped"
    echo
    if (( ${#skipped[@]} == 0 )); then echo "- nothing"; fi
    for line in "${skipped[@]}"; do echo "- $line"; done
    cat "$out/sections.md"
} >"$summary"
rm -f "$out/parts.md" "$out/sections.md"
echo "wrote $summary"
if (( gpus == 0 )); then
    echo "no CUDA GPU: the CPU parts ran; skipped:"
    printf '  - %s\n' "${skipped[@]}"
    exit 0
fi
exit "$failed"
