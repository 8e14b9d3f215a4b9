#!/usr/bin/env bash
# Everything fibpolicy claims on a GPU, measured in one run of at most about nine minutes:
#
#     bash scripts/gpu_wheels.sh            # once, on a machine with the package registry (fills .whl/)
#     bash benchmarks/gpu_suite.sh RESULTS  # on the GPU machine, from the repository root
#
# It installs the carried wheels (.whl/, into /tmp, nothing system-wide) and GL loaders (.gl/*.deb) when
# they are there, then runs each part under its own time cap; a part that fails or runs out of time is
# reported and the next one runs. RESULTS gets one log per part, the JSON the benchmarks write, and
# results.md: every part's tables, its exit status and seconds. Without CUDA the CUDA parts report
# "skipped: no CUDA" and the CPU-capable parts run at tiny sizes (FIBPOLICY_SUITE_SCALE=tiny), which is
# how CI checks the suite end to end.
#
# Caps (seconds) can be changed per part, e.g. CAP_PUSHT=240. Data are recorded under RESULTS/data
# unless FIBPOLICY_DATA_DIR is set.
set -uo pipefail

RESULTS=${1:?usage: bash benchmarks/gpu_suite.sh RESULTS_DIR}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
SUMMARY="$RESULTS/results.md"
SUITE_START=$(date +%s)
CORES=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")  # nproc would report OMP_NUM_THREADS
WORKERS=$(( CORES > 4 ? CORES - 4 : 1 ))  # recording in the background leaves cores to the GPU parts
# One thread per process: the env workers are many processes, and the GPU parts need only a launcher.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if compgen -G ".whl/*.whl" >/dev/null; then
    # --no-deps: the wheels are the whole missing set (scripts/gpu_wheels.sh); nothing is fetched
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fibpolicy_site .whl/*.whl \
        && export PYTHONPATH=/tmp/fibpolicy_site${PYTHONPATH:+:$PYTHONPATH} \
        || echo "warning: installing .whl/ failed; parts that need those packages will fail" >&2
fi
if compgen -G ".gl/*.deb" >/dev/null && [ "$(id -u)" = 0 ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$nvidia_egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-$nvidia_egl}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export FIBPOLICY_DATA_DIR=${FIBPOLICY_DATA_DIR:-$RESULTS/data}

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    CUDA=1; DEVICE=cuda; SCALE=${FIBPOLICY_SUITE_SCALE:-full}
else
    CUDA=0; DEVICE=cpu; SCALE=${FIBPOLICY_SUITE_SCALE:-tiny}
fi
{
    echo "# fibpolicy GPU suite, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    "$PY" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"- machine: {gpu}; {platform.processor() or platform.machine()}; Python {platform.python_version()}; "
      f"torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"- triton {triton.__version__}")
except ImportError:
    print("- triton: not installed")
EOF
    echo "- cores: $CORES; scale: $SCALE"
    echo
} > "$SUMMARY"

# part NAME CAP_SECONDS NEEDS_CUDA COMMAND...: run it under its cap, log it, append its tables to results.md
part() {
    local name=$1 cap=$2 needs_cuda=$3
    shift 3
    local var="CAP_${name^^}"
    cap=${!var:-$cap}
    local log="$RESULTS/$name.log"
    echo "## $name" >> "$SUMMARY"
    if [ "$needs_cuda" = 1 ] && [ "$CUDA" = 0 ]; then
        echo "skipped: no CUDA" | tee "$log" >> "$SUMMARY"
        echo >> "$SUMMARY"
        echo "[suite] $name: skipped: no CUDA"
        return 0
    fi
    local start rc
    start=$(date +%s)
    echo "[suite] $name (cap ${cap}s): $*"
    timeout -k 15 "$cap" "$@" > "$log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - start ))
    # the tables, verdicts and one-line results each part prints
    tr '\r' '\n' < "$log" | grep -E '^\||^(GPU target|target|verdict|skipped)' >> "$SUMMARY"
    tr '\r' '\n' < "$log" | grep -oE '\[fibpolicy\] (eval|done) .*' >> "$SUMMARY"
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "status: stopped at its ${cap} s cap; last lines:" >> "$SUMMARY"
        tail -n 5 "$log" | sed 's/^/    /' >> "$SUMMARY"
    elif [ $rc != 0 ]; then
        echo "status: failed (exit $rc); last lines:" >> "$SUMMARY"
        tail -n 15 "$log" | sed 's/^/    /' >> "$SUMMARY"
    fi
    echo "part $name: exit $rc, ${took} s" >> "$SUMMARY"
    echo >> "$SUMMARY"
    echo "[suite] $name: exit $rc, ${took} s"
    FAILED=$(( FAILED + (rc != 0) ))
}
FAILED=0

if [ "$SCALE" = full ]; then
    PUSHT_DATA=(); LIFT_DEMOS=20; TRAIN_MIN=1.0; LIFT_MIN=1.0; ATT_TOKENS="65 197 785 1569 4097"
    POLICY_ARGS=(--arms default fib_paper --samplers ddim10 ddim16 ddpm100 --paths eager bf16 bf16+graph --latency-batches 1 56 --repeats 5)
    EVAL_ENVS=16; STEPS=200
    ATT_DTYPES="bfloat16 float32"; ATT_METHODS="sdpa sdpa+mask triton auto"; ATT_REPEATS=10; ATT_EXTRA=()
else  # CPU check of the whole path: tiny data, one optimiser step per run, short episodes
    PUSHT_DATA=(task.prepare.source.episodes=3 task.dataset.zarr_path="$FIBPOLICY_DATA_DIR/pusht_suite_tiny.zarr")
    LIFT_DEMOS=2; TRAIN_MIN=0.05; LIFT_MIN=0.05; ATT_TOKENS="65"
    POLICY_ARGS=(--arms default --samplers ddim4 --paths eager bf16 --latency-batches 1 --repeats 1 --train-steps 1)
    EVAL_ENVS=2; STEPS=10
    ATT_DTYPES="float32"; ATT_METHODS="sdpa cpu auto"; ATT_REPEATS=1; ATT_EXTRA=(--no-memory)
fi
TINY_EVAL=()
TINY_TRAIN=()
if [ "$SCALE" != full ]; then
    TINY_EVAL=(n_test=1 n_train=1 max_steps=8)
    TINY_TRAIN=(training.trainer.max_steps=1 training.trainer.batch_size=4 task.evaluator.n_test=1 task.evaluator.n_train=1
                task.evaluator.max_steps=8 policy.down_dims=[32,64,128])
fi

# Demonstrations record on the CPU cores while the GPU parts run (they are not timed here).
"$PY" prepare.py data_dir="$FIBPOLICY_DATA_DIR" task.prepare.source.workers=$WORKERS "${PUSHT_DATA[@]}" \
    > "$RESULTS/prepare_pusht.log" 2>&1 &
PREP_PUSHT=$!
"$PY" prepare.py task=lift_image data_dir="$FIBPOLICY_DATA_DIR" task.robomimic.demos=$LIFT_DEMOS \
    task.prepare.generate.source.workers=$WORKERS > "$RESULTS/prepare_lift.log" 2>&1 &
PREP_LIFT=$!

part cuda_tests 60 1 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_attention_triton.py \
    tests/test_attention_backends.py tests/test_fast_inference.py
part triton_check 60 1 "$PY" benchmarks/triton_check.py --device cuda --json "$RESULTS/triton_check.json" --max-seconds 30
# shellcheck disable=SC2086
part attention 75 0 "$PY" benchmarks/attention.py --device $DEVICE --tokens $ATT_TOKENS --dtype $ATT_DTYPES \
    --methods $ATT_METHODS --repeats $ATT_REPEATS "${ATT_EXTRA[@]}" --json "$RESULTS/attention.json" --max-seconds 40
# FlexAttention with the same mask compiles per shape: its own part, bf16 only, so its compile time cannot
# crowd out the rows above.
# shellcheck disable=SC2086
part attention_flex 90 1 "$PY" benchmarks/attention.py --device cuda --tokens $ATT_TOKENS --dtype bfloat16 \
    --methods sdpa flex --repeats $ATT_REPEATS --json "$RESULTS/attention_flex.json" --max-seconds 50
part policy 90 0 "$PY" benchmarks/policy.py --device $DEVICE "${POLICY_ARGS[@]}" --json "$RESULTS/policy.json" --max-seconds 60

wait $PREP_PUSHT; echo "[suite] PushT demonstrations: exit $? ($(tail -n 1 "$RESULTS/prepare_pusht.log"))"
# The default PushT image recipe, trained on the GPU for TRAIN_MIN minutes, evaluated once at the end.
part pusht_train $(( ${TRAIN_MIN%.*} * 60 + 90 )) 0 "$PY" train.py "${PUSHT_DATA[@]}" run_dir="$RESULTS/pusht_run" \
    training.trainer.max_minutes=$TRAIN_MIN training.trainer.eval_every_epochs=100000 training.trainer.num_workers=4 \
    training.trainer.device=$DEVICE training.trainer.progress=false task.evaluator.progress=false \
    task.evaluator.n_train_videos=0 task.evaluator.n_test_videos=0 "${TINY_TRAIN[@]}"
# The full protocol (56 episodes, 300 steps) with the policy on the GPU: diffusers' loop, then the fast path.
part pusht_eval 60 0 "$PY" eval.py checkpoint="$RESULTS/pusht_run" device=$DEVICE videos=false \
    output_dir="$RESULTS/pusht_eval" "${TINY_EVAL[@]}"
part pusht_eval_fast 60 0 "$PY" eval.py checkpoint="$RESULTS/pusht_run" device=$DEVICE videos=false fast_inference=bf16 \
    output_dir="$RESULTS/pusht_eval_fast" "${TINY_EVAL[@]}"

wait $PREP_LIFT; echo "[suite] Lift demonstrations: exit $? ($(tail -n 1 "$RESULTS/prepare_lift.log"))"
part lift_envs 45 0 "$PY" benchmarks/robomimic_envs.py --tasks lift --skip-env --workers 1 $EVAL_ENVS --steps $STEPS
# Lift from two cameras, trained for LIFT_MIN minutes, then the 56-episode protocol rendered by EGL.
part lift_train $(( ${LIFT_MIN%.*} * 60 + 120 )) 0 "$PY" train.py task=lift_image task.robomimic.demos=$LIFT_DEMOS \
    run_dir="$RESULTS/lift_run" training.trainer.max_minutes=$LIFT_MIN training.trainer.eval_every_epochs=100000 \
    training.trainer.num_workers=4 training.trainer.device=$DEVICE training.trainer.progress=false \
    task.evaluator.progress=false task.evaluator.n_envs=$EVAL_ENVS \
    task.evaluator.n_train_videos=0 task.evaluator.n_test_videos=0 "${TINY_TRAIN[@]}"
part lift_result 30 0 "$PY" -m fibpolicy.plot "$RESULTS/lift_run" "$RESULTS/pusht_run" --table

echo "suite: $FAILED part(s) failed, $(( $(date +%s) - SUITE_START )) s in all" >> "$SUMMARY"
echo "[suite] done: $FAILED part(s) failed; tables in $SUMMARY"
cat "$SUMMARY"
exit $(( FAILED > 0 ))
