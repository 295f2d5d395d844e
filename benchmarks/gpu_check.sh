#!/usr/bin/env bash
# One prepared check of the training stack on one GPU, in at most 8 minutes, every figure into one file:
#   1. every roadmap step at 224 px, batch 128, bf16 + channels_last, eager: train and eval img/s, memory, MFU;
#   2. a smoke study on the GPU killed with SIGKILL mid-training, then resumed (through run_ablation.py);
#   3. torchrun with one process on NCCL (through run_ablation.py);
#   4. the data pipeline with and without the cache (benchmarks/data_pipeline.py);
#   5. the same steps compiled (by default the two end points: each compile takes about a minute);
#   6. our end points against torchvision's ResNet-50 and timm's ConvNeXt-T, interleaved, eager;
#   7. the same, compiled.
# Parts run in that order, each under its own time limit and all under --budget; a part that no longer fits
# is written down as skipped. `--device cpu` runs every part at reduced sizes (the slow tests run it), so the
# script is known to work before a GPU sees it.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out FILE] [--budget SECONDS (cuda: 480, cpu: 1440)]
#                                [--compiled-steps all|none|STEP,STEP] [--data DIR] [--peak-tflops X]
#
# Run it from the project's environment (PYTHON=... picks the interpreter); it writes only --out and
# temporary folders it removes. Exit status 1 when a part failed or ran out of time.
set -u -o pipefail

DEVICE=cuda
OUT=gpu_check_results.txt
BUDGET=""
COMPILED_STEPS=""
DATA=""
PEAK_TFLOPS=""
PYTHON=${PYTHON:-python}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --compiled-steps) COMPILED_STEPS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --peak-tflops) PEAK_TFLOPS=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1; see --help" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "error: --device $DEVICE is not valid; choose cpu or cuda" >&2; exit 2 ;; esac
# On the CPU the sizes are small but a shared machine's load varies: its limits are 3 times the GPU's.
if [[ "$DEVICE" == cuda ]]; then SLACK=1; else SLACK=3; fi
BUDGET=${BUDGET:-$((480 * SLACK))}
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "error: --budget $BUDGET is not valid; a whole number of seconds" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "$OUT")
mkdir -p "$(dirname "$OUT")"
SCRATCH=$(mktemp -d -t gpu_check.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
cd "$REPO" || exit 2

PEAK_ARGS=()
[[ -n "$PEAK_TFLOPS" ]] && PEAK_ARGS=(--peak-tflops "$PEAK_TFLOPS")
if [[ "$DEVICE" == cuda ]]; then
  # The issue's sizes: 224 px, batch 128, bf16 + channels_last; timm's protocol (10 warm-up, 5 x 8 timed).
  STEP_ARGS=(--device cuda --image-size 224 --batch-size 128 --precision bf16 --channels-last "${PEAK_ARGS[@]}")
  PAIR_ARGS=(--device cuda --image-size 224 --batch-size 128 --precision bf16 --channels-last "${PEAK_ARGS[@]}")
  SMOKE_EPOCHS=6
  DATA_SIZE=224
  COMPILED_STEPS=${COMPILED_STEPS:-resnet50,separate_downsampling}
else
  # Reduced sizes: every code path, seconds each, on 2 cores.
  STEP_ARGS=(--device cpu --image-size 32 --batch-size 4 --width-mult 0.125 --warmup 1 --repeats 1 --iterations 1
             "${PEAK_ARGS[@]}")
  PAIR_ARGS=(--device cpu --image-size 32 --batch-size 2 --warmup 0 --repeats 1 --iterations 1 "${PEAK_ARGS[@]}")
  SMOKE_EPOCHS=3
  DATA_SIZE=32
  COMPILED_STEPS=${COMPILED_STEPS:-none}  # inductor compiles C++ on the CPU: a minute per network
fi

START=$SECONDS
DEADLINE=$((START + BUDGET))
SUMMARY=()
FAILED=0

# part NAME LIMIT_SECONDS COMMAND...: run COMMAND under min(LIMIT, what is left of the budget), its output
# into the file, and one summary line: ok, FAILED (exit status), TIMED OUT, or skipped.
part() {
  local name=$1 limit=$(($2 * SLACK))
  shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < 15)); then
    SUMMARY+=("$(printf '%-28s skipped (the %d s budget is spent)' "$name" "$BUDGET")")
    printf '\n== %s: skipped, the %d s budget is spent ==\n' "$name" "$BUDGET" >>"$OUT"
    return
  fi
  ((limit > left)) && limit=$left
  printf '\n== %s (limit %d s) ==\n$ %s\n' "$name" "$limit" "$*" >>"$OUT"
  local began=$SECONDS status
  timeout --kill-after=10 "$limit" "$@" >>"$OUT" 2>"$SCRATCH/stderr"
  status=$?
  # Warnings and progress lines go to stderr; its end is kept when a part fails.
  local took=$((SECONDS - began)) verdict=ok
  if ((status == 124 || status == 137)); then
    verdict="TIMED OUT after ${limit} s"
  elif ((status != 0)); then
    verdict="FAILED (exit status $status)"
  fi
  if [[ "$verdict" != ok ]]; then
    FAILED=1
    { echo "-- stderr (last 30 lines) --"; tail -n 30 "$SCRATCH/stderr"; } >>"$OUT"
  fi
  SUMMARY+=("$(printf '%-28s %-30s %4d s' "$name" "$verdict" "$took")")
  printf -- '-- %s: %s in %d s --\n' "$name" "$verdict" "$took" >>"$OUT"
}

environment() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(hostname); git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
  echo "cpu cores this process may use: $(env -u OMP_NUM_THREADS nproc); device: $DEVICE; budget: $BUDGET s"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  fi
  "$PYTHON" - <<'PY'
import torch, torchvision, timm
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
      f"torchvision {torchvision.__version__}, timm {timm.__version__}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
          f"capability {torch.cuda.get_device_capability()}")
PY
}

torchrun_one_process() {
  # One process, on NCCL on CUDA (gloo on the CPU); NCCL_DEBUG=VERSION prints NCCL's version when it starts.
  mkdir -p "$SCRATCH/torchrun" && cd "$SCRATCH/torchrun" || return 2
  NCCL_DEBUG=VERSION "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 "$REPO/run_ablation.py" \
    --upto resnet50 --preset smoke --device "$DEVICE" --no-progress 2>&1 | grep -v "^\s*$"
}

data_pipeline() {
  if [[ ! -f "$REPO/benchmarks/data_pipeline.py" ]]; then
    echo "benchmarks/data_pipeline.py is not in this checkout"
    return 3
  fi
  local args=(--image-size "$DATA_SIZE")
  [[ -n "$DATA" ]] && args+=(--data "imagefolder:$DATA")
  [[ "$DEVICE" == cpu ]] && args+=(--quick)
  "$PYTHON" "$REPO/benchmarks/data_pipeline.py" "${args[@]}"
}

# The parts that are functions run in a child shell, so that `timeout` can stop them and their `cd` stays there.
export -f environment torchrun_one_process data_pipeline
export DEVICE REPO PYTHON SCRATCH DATA DATA_SIZE BUDGET

: >"$OUT"
echo "# benchmarks/gpu_check.sh --device $DEVICE: every figure names its device, batch, precision and resolution" >>"$OUT"
part "environment" 60 bash -c environment
part "steps, eager" 150 "$PYTHON" benchmarks/step_throughput.py --steps all "${STEP_ARGS[@]}"
part "smoke study killed, resumed" 120 "$PYTHON" benchmarks/kill_and_resume.py --device "$DEVICE" \
  --epochs "$SMOKE_EPOCHS"
part "torchrun, 1 process" 90 bash -c torchrun_one_process
part "data pipeline" 90 bash -c data_pipeline
if [[ "$COMPILED_STEPS" != none ]]; then
  part "steps, compiled" 180 "$PYTHON" benchmarks/step_throughput.py --steps "$COMPILED_STEPS" --compile \
    "${STEP_ARGS[@]}"
fi
part "side by side, eager" 90 "$PYTHON" benchmarks/side_by_side.py "${PAIR_ARGS[@]}"
if [[ "$COMPILED_STEPS" != none ]]; then
  part "side by side, compiled" 240 "$PYTHON" benchmarks/side_by_side.py --compile "${PAIR_ARGS[@]}"
fi

{
  echo
  echo "== summary: $((SECONDS - START)) s in all, budget $BUDGET s =="
  printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$OUT"
exit $FAILED
