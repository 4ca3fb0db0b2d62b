#!/usr/bin/env bash
# The prepared GPU check: one script for a bare CUDA machine that has torch, numpy and
# pytorch-lightning (this workplace's GPU image) and the wheels of benchmarks/gpu_wheels.sh
# in .whl/. In under 8 minutes (BUDGET_S for the steps, each with its own timeout, cut to
# what is left) it runs:
#   pytest -m gpu                  the GPU-marked tests
#   segkit make-demo               the demo data the training run reads
#   train_bf16                     trainer=gpu (bf16-mixed), model=nnunet_default, 128³: steps/s
#   fwdbwd_plainconvunet           fwd+bwd vs DNA's PlainConvUNet (bench_unet.py, bf16, 128³)
#   fwdbwd_resenc                  fwd+bwd vs DNA's ResidualEncoderUNet (bench_architectures.py)
#   memory_model                   planner estimate vs torch.cuda.max_memory_allocated
#   augment_cuda                   bench_augment.py with the GPU row, 128³
#   sliding_window_cuda            bench_sliding_window.py on CUDA vs MONAI
# and ends with one table (step, status, seconds, result), also written to $OUT/gpu_check.md
# with every step's output in $OUT/gpu_check.log when OUT is set.
#
#   bash benchmarks/gpu_wheels.sh                # here, once: .whl/ (about 5 MiB)
#   bash benchmarks/gpu_check.sh --dry-run       # prints every command, runs nothing
#   bash benchmarks/gpu_check.sh                 # on the GPU machine (carry .whl)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

PY=${PY:-python3}
WORK=${GPU_CHECK_DIR:-/tmp/segkit_gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET_S=${BUDGET_S:-450}
LOG=$WORK/gpu_check.log
ROWS=()
START=$SECONDS
FAILED=0

# step NAME TIMEOUT_S RESULT_REGEX COMMAND...: run COMMAND under its timeout (cut to the
# budget left), keep its output, and add a row with the last line matching RESULT_REGEX.
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    if ((DRY)); then
        printf '[%s, timeout %s s]' "$name" "$limit"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 10)); then
        ROWS+=("| $name | skipped | 0 | the ${BUDGET_S} s budget is spent |")
        FAILED=1
        return 0
    fi
    ((limit > left)) && limit=$left
    local out=$WORK/$name.log t0=$SECONDS rc status result
    printf '\n== %s (timeout %s s):' "$name" "$limit" | tee -a "$LOG"
    printf ' %q' "$@" | tee -a "$LOG"
    printf '\n' | tee -a "$LOG"
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit" "$@" >"$out" 2>&1
    rc=$?
    cat "$out" >>"$LOG"
    tail -n 25 "$out"
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT (${limit} s)"; FAILED=1 ;;
        *) status="FAIL (rc $rc)"; FAILED=1 ;;
    esac
    result=$(grep -E -- "$pattern" "$out" | tail -n 1 | sed 's/^RESULT: //; s/^| *//; s/ *|$//; s/|/\//g' | cut -c1-170)
    # no result line: the output's last line (the error, usually) says what happened
    [[ -z $result ]] && result=$(grep -v '^\s*$' "$out" | tail -n 1 | sed 's/|/\//g' | cut -c1-170)
    [[ -z $result ]] && result="(no output)"
    ROWS+=("| $name | $status | $((SECONDS - t0)) | $result |")
}

if ((DRY)); then
    echo "gpu_check --dry-run: the commands, in order; budget ${BUDGET_S} s for all steps"
else
    mkdir -p "$WORK"
    : >"$LOG"
fi

# the carried wheels, then the repository itself on the path (no build, no index)
if compgen -G ".whl/*.whl" >/dev/null || ((DRY)); then
    step install_wheels 60 "^RESULT" \
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
fi
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
((DRY)) && echo "export PYTHONPATH=$PYTHONPATH"

step environment 60 "^RESULT" "$PY" benchmarks/gpu_env.py

# the modules that mark GPU tests (collecting only them keeps the step short)
mapfile -t GPU_TESTS < <(grep -rlE "pytest\.mark\.gpu" tests --include='*.py' | sort)
((${#GPU_TESTS[@]})) || GPU_TESTS=(tests)
step pytest_gpu 150 "passed|failed|skipped|error|no tests ran" \
    "$PY" -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}"

step make_demo 60 "written" "$PY" -m segkit.cli make-demo "$WORK/data/demo"

step train_bf16 150 "^RESULT" "$PY" benchmarks/gpu_train.py --data-dir "$WORK/data" \
    --out "$WORK/train" --steps 40 --warmup 10 trainer=gpu model=nnunet_default \
    "data.patch_size=[128,128,128]"

step fwdbwd_plainconvunet 75 "^segkit UNet" "$PY" benchmarks/bench_unet.py --device cuda \
    --bf16 --size 128 128 128 --batch 2 --repeats 5

step fwdbwd_resenc 75 '^\| `resenc`' "$PY" benchmarks/bench_architectures.py --device cuda \
    --bf16 --archs resenc --size 128 128 128 --batch 2 --repeats 5 --threads 8 --no-odd

step memory_model 90 "^RESULT" "$PY" benchmarks/gpu_memory.py

step augment_cuda 90 "BatchAugment.*cuda" "$PY" benchmarks/bench_augment.py --device cuda \
    --patch 128 128 128 --batch 2 --batches 2 --repeats 3 --warmup 1

step sliding_window_cuda 75 "faster than MONAI|^segkit sliding " \
    "$PY" benchmarks/bench_sliding_window.py --device cuda --size 256 256 192 \
    --window 128 128 128 --channels 32 --depth 5 --sw-batch-size 4 --repeats 3

if ((DRY)); then
    echo "then: the summary table, printed and written to \$OUT/gpu_check.md (+ gpu_check.log)"
    exit 0
fi

TABLE=$(
    echo "# segkit GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s"
    echo
    echo "| step | status | s | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
)
printf '\n%s\n' "$TABLE"
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    printf '%s\n' "$TABLE" >"$OUT/gpu_check.md"
    cp "$LOG" "$OUT/gpu_check.log"
fi
exit "$FAILED"
