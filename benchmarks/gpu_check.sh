#!/usr/bin/env bash
# One command for a GPU machine without internet: build what needs building, run the whole test suite with the real
# kernels (interpreter off), run the benchmark sweep, and pack logs, CSV and plots into one folder (and a tar).
#   bash benchmarks/gpu_check.sh [quick|full] [OUTPUT_DIR]
# Through the device tool:  run(command="bash benchmarks/gpu_check.sh quick $OUT/gpu_check")
# Quick mode is meant to finish in under 9 minutes on an H100; full mode may need several calls.
# TESTS="tests/test_x.py ..." narrows the test run (PYTEST_ARGS adds options, e.g. -k); SWEEP_ARGS adds options to
# the sweep (e.g. --ops egnn_layer model); EGNN_NODES sets the sizes of the EGNN-layer target benchmark;
# TEST_TIMEOUT / EGNN_TIMEOUT / BENCH_TIMEOUT (seconds) bound the three steps.
set -uo pipefail
mode=${1:-quick}
out=${2:-gpu_check_$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)/gpu_check  # everything goes into the tar; $out gets the tar and a few summaries (<= 8 files)
mkdir -p "$work"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
status=0
{
  echo "== $(date -Is) gpu_check $mode, commit $(git rev-parse HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$work/environment.txt" 2>&1
# Install without touching torch/triton (the machine has no internet); the C++/CUDA extension builds here once it
# exists (issue 5).
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$work/install.log" 2>&1 || status=1
python3 -m egno_fast info > "$work/info.txt" 2>&1 || status=1
timeout "${TEST_TIMEOUT:-250}" python3 -m pytest -q -p no:cacheprovider --durations=15 ${PYTEST_ARGS:-} ${TESTS:-} > "$work/tests.log" 2>&1 || status=1
timeout "${EGNN_TIMEOUT:-240}" python3 -m benchmarks.egnn_target --nodes ${EGNN_NODES:-100000 50000 25000} \
  --out "$work/egnn_target" > "$work/egnn_target.log" 2>&1 || status=1
if [ "$mode" = full ]; then sweep=full; else sweep=quick; fi
fit=""; [ "$mode" = full ] && fit=--max-fit
timeout "${BENCH_TIMEOUT:-280}" python3 -m benchmarks --sweep "$sweep" $fit ${SWEEP_ARGS:-} --out "$work/bench" > "$work/bench.log" 2>&1 || status=1
{ cat "$work/environment.txt"; tail -n 5 "$work/tests.log"; cat "$work/egnn_target/summary.md" 2>/dev/null
  cat "$work/bench/summary.md" 2>/dev/null; } > "$out/summary.txt"
tail -n 300 "$work/tests.log" > "$out/tests_tail.log"
cp "$work/bench/time.png" "$work/bench/memory.png" "$work/bench/results.csv" "$out/" 2>/dev/null
tar -czf "$out/gpu_check.tar.gz" -C "$(dirname "$work")" gpu_check
echo "gpu_check $mode finished with status $status; results in $out"
exit $status
