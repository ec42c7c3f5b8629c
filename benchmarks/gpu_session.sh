#!/usr/bin/env bash
# One lent-GPU session, run from the repository root: install carried wheels (.whl/),
# run the GPU-marked tests and the GPU benchmarks, write everything to $OUT.
# Each step has its own time limit so one slow step cannot starve the others.
set -u
OUT=${OUT:-/tmp/m2es_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
T_TESTS=${T_TESTS:-120}; T_FLOW=${T_FLOW:-160}; T_FEAT=${T_FEAT:-120}; T_TRAIN=${T_TRAIN:-150}
step() {  # step NAME SECONDS COMMAND...: run, keep the log, note the exit code
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, cv2, sys; print(sys.version.split()[0], torch.__version__, cv2.__version__, hasattr(cv2, 'optflow'), torch.cuda.get_device_name())"
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# STEPS picks what runs; COMPILE=0 measures the eager solver and the uncompiled fast path
# (torch.compile of every pyramid size and batch shape takes minutes of a short lease).
STEPS=${STEPS:-"flow features train tests"}
COMPILE=${COMPILE:-1}
nocompile=(); fcompile=(--compile)
[ "$COMPILE" = 0 ] && nocompile=(--no-compile) && fcompile=()
for s in $STEPS; do
  case $s in
    flow) step flow_bench "$T_FLOW" python3 -m benchmarks.bench_flow --quick "${nocompile[@]}" --out "$OUT/bench_flow.json" ;;
    features) step features_bench "$T_FEAT" python3 benchmarks/bench_features.py --quick "${fcompile[@]}" \
                --out "$OUT/bench_features.json" ;;
    # a full LOSO is 22 folds; 8 folds give the per-fold rate (the JSON has loso_s_per_fold_mean)
    train) step train_bench "$T_TRAIN" python3 benchmarks/bench_train.py --precision bf16 --folds 8 --no-final \
             --out "$OUT/bench_train.json" ;;
    tests) step gpu_tests "$T_TESTS" python3 -m pytest -q -m gpu -p no:cacheprovider ${TEST_FILES:-tests/test_tvl1_torch.py \
             tests/test_features.py tests/test_iaenet.py} ;;
  esac
done
grep -h "INFO\|passed\|failed\|Error" "$OUT"/*.log | grep -v "^W1" | tail -n 40
cat "$OUT/steps.txt"
