#!/usr/bin/env bash
# The GPU check for a short slot on a GPU machine without internet: ordered steps, each under its own time limit,
# at most 5 minutes (BUDGET_S) in all, at most 8 files left in the output folder.
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]    run the steps of STEPS below, in order
#   bash benchmarks/gpu_check.sh --dry-run       print each step (number, name, limit, command) and the budget sum
#                                                without running anything; exit 2 if the limits exceed the budget
# Allow the call 360 s (the budget, plus starting the shell and copying the results back).
#
# A step that reaches its limit gets SIGINT (pytest then prints what ran; a benchmark keeps the records it printed),
# SIGKILL KILL_AFTER_S later; the next step runs all the same. If the C++ extension does not build (or not in time),
# the later steps run with EGNO_FAST_NO_EXTENSION=1, so nothing waits on or restarts that build.
# Output folder: summary.md (the step table, environment, test results, the benchmark tables), steps.tsv (one line
# per step: name, limit, seconds, exit code, status; written as the steps finish), tests_tail.log (the end of each
# pytest log) and gpu_check.tar.gz (every log and result). Exit status: 0 if every step passed, 1 otherwise.
#
# Settings (environment):
#   EGNN_NODES     the node count of the EGNN-layer target, one size (default 25000)
#   EGNN_VARIANTS  its variants (default: the reference in fp32, TF32 and bf16, Triton TF32 and bf16, torch.compile)
#   KERNEL_TESTS   test files of the kernel step, each run in its own pytest process, all at once (default: the
#                  Triton EGNN and temporal-convolution tests); the tests marked `gpu` run in one more process
#   KERNEL_TESTS_K their -k expression (default: without the ahead-of-time compile tests, which CI runs on CPU)
#   PYTEST_ARGS    more pytest options; BANDWIDTH_ARGS  options of benchmarks.temporal_bandwidth
#   SCALE_ARGS     options of benchmarks.scale (default: 2000, 4000, 8000 atoms fitted, 16000 confirming)
#   GPU_CHECK_TIMEOUT_<step>=S  another limit for a step (the sum is still checked against the budget)
#   GPU_CHECK_CMD_<step>=CMD    another command for a step; GPU_CHECK_STUB=1 makes every step `echo` (tests use these)
set -uo pipefail

BUDGET_S=300      # the whole script, on one H200
PACK_MARGIN_S=10  # summary and tar after the last step
KILL_AFTER_S=5    # SIGKILL this long after a step's SIGINT (pytest needs a few seconds to report)
OUTPUTS=(summary.md steps.tsv tests_tail.log gpu_check.tar.gz)  # all that is left in the output folder

# step | time limit (s) | command: run with `bash -c` from the repository root; $WORK is the log folder.
# install: no dependencies and no index (no internet there: torch and triton stay as installed); nothing is compiled
# at install time: the extension gets its own step and limit, through the package's build on first use.
STEPS=(
  "environment|10|environment_facts"
  "install|15|PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q --no-deps --no-build-isolation -e ."
  "build_cpp|75|python3 -m egno_fast.cpp.build"
  "kernel_tests|70|kernel_tests"
  "egnn_target|40|python3 -m benchmarks.egnn_target --nodes \$EGNN_NODES --variants \$EGNN_VARIANTS --repeats 5 --no-fit --out \$WORK/egnn_target"
  "temporal_bandwidth|20|python3 -m benchmarks.temporal_bandwidth \$BANDWIDTH_ARGS --out \$WORK/temporal_bandwidth"
  "scale|25|python3 -m benchmarks.scale --backend auto --device cuda \$SCALE_ARGS --output \$WORK/scale.json --plot \$WORK/scale.png"
)

export EGNN_NODES=${EGNN_NODES:-25000}
export EGNN_VARIANTS=${EGNN_VARIANTS:-reference triton_tf32 triton_bf16 reference_tf32 reference_bf16 compile_tf32}
export KERNEL_TESTS=${KERNEL_TESTS:-tests/test_egnn_triton.py tests/test_temporal_conv_triton.py}
export KERNEL_TESTS_K=${KERNEL_TESTS_K-not every_configuration_compiles}
export PYTEST_ARGS=${PYTEST_ARGS:-} BANDWIDTH_ARGS=${BANDWIDTH_ARGS:-}
export SCALE_ARGS=${SCALE_ARGS:---sizes 2000 4000 8000 --confirm 16000 --repeats 3}

# ------------------------------------------------------------------------------------ the step table, resolved
names=() limits=() commands=()
for row in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<< "$row"
  override="GPU_CHECK_TIMEOUT_$name"; limit=${!override:-$limit}
  if ! [[ $limit =~ ^[0-9]+$ ]] || (( limit < 1 )); then
    echo "gpu_check: the limit of step $name must be a whole number of seconds >= 1, not '$limit'" >&2; exit 2
  fi
  [ "${GPU_CHECK_STUB:-}" = 1 ] && command="echo stub: $name"
  override="GPU_CHECK_CMD_$name"; command=${!override:-$command}
  names+=("$name"); limits+=("$limit"); commands+=("$command")
done
total=0; for limit in "${limits[@]}"; do total=$((total + limit)); done
needed=$((total + ${#names[@]} * KILL_AFTER_S + PACK_MARGIN_S))
budget_line="limits $total s + ${#names[@]} x ${KILL_AFTER_S} s kill grace + ${PACK_MARGIN_S} s packing = $needed s, budget $BUDGET_S s"
if ! [[ $EGNN_NODES =~ ^[0-9]+$ ]]; then echo "gpu_check: EGNN_NODES must be one node count, not '$EGNN_NODES'" >&2; exit 2; fi

if [ "${1:-}" = --dry-run ]; then
  printf '#\tstep\tlimit_s\tcommand\n'
  for i in "${!names[@]}"; do printf '%d\t%s\t%s\t%s\n' "$((i + 1))" "${names[$i]}" "${limits[$i]}" "${commands[$i]}"; done
  printf 'total\t%s\n' "$budget_line"
  printf 'outputs\t%s\n' "${OUTPUTS[*]}"
  (( needed <= BUDGET_S )) || { echo "gpu_check: over the budget" >&2; exit 2; }
  exit 0
fi
(( needed <= BUDGET_S )) || { echo "gpu_check: over the budget: $budget_line" >&2; exit 2; }

out=${1:-gpu_check_$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
rm -f "${OUTPUTS[@]/#/$out/}"
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
export WORK=$tmp/gpu_check  # every log and result; packed into gpu_check.tar.gz
mkdir -p "$WORK/tests"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export EGNO_FAST_BUILD_DIR=${EGNO_FAST_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/egno_fast/extensions}

# ------------------------------------------------------------------------------------ the steps' helpers
environment_facts() {
  local commit changed
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?'); changed=$(git status --porcelain 2>/dev/null | wc -l)
  echo "gpu_check $(date -Is), commit $commit ($changed paths differ from it: the working tree as it was is what ran)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>&1
  echo "cpus $(nproc), memory $(free -g 2>/dev/null | awk '/^Mem:/{print $2 " GiB"}'), disk free $(df -h . | awk 'NR==2{print $4}')"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1) (CUDA_HOME=${CUDA_HOME:-unset})"
  echo "c++: $(c++ --version 2>/dev/null | head -n 1); ninja: $(ninja --version 2>/dev/null || echo 'not found')"
  python3 -c 'import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "| device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)")
import triton; print("triton", triton.__version__)'
}

pytest_interruptible() {
  # A background job of a non-interactive shell ignores SIGINT, and Python then keeps ignoring it: give it back, so
  # that at the time limit pytest stops and prints what ran.
  python3 -c 'import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); import pytest
sys.exit(pytest.main(sys.argv[1:]))' -q -p no:cacheprovider -rfEs --durations=5 "$@"
}

kernel_tests() {
  # Each kernel test file in its own pytest process, all at once (their time goes to compiling kernels, one CPU
  # core per process), and the tests marked gpu (any file) in one more.
  local pids=() logs=() file log status rc=0 i k=()
  [ -n "$KERNEL_TESTS_K" ] && k=(-k "$KERNEL_TESTS_K")
  trap 'echo "kernel_tests: time limit, pytest interrupted (the counts below are what ran)"' INT
  for file in $KERNEL_TESTS; do
    log=$WORK/tests/$(basename "$file" .py).log
    pytest_interruptible -m "not gpu" "${k[@]}" $PYTEST_ARGS "$file" > "$log" 2>&1 &
    pids+=($!); logs+=("$log")
  done
  local marked
  marked=$(grep -lE '^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bmark\.gpu\b)' tests/test_*.py)
  if [ -n "$marked" ]; then
    pytest_interruptible -m gpu $PYTEST_ARGS $marked > "$WORK/tests/gpu_marked.log" 2>&1 &
    pids+=($!); logs+=("$WORK/tests/gpu_marked.log")
  fi
  for i in "${!pids[@]}"; do
    while :; do  # a trapped SIGINT ends `wait` early: wait again until the process is gone
      wait "${pids[$i]}"; status=$?
      (( status > 128 )) && kill -0 "${pids[$i]}" 2>/dev/null && continue
      break
    done
    echo "$(basename "${logs[$i]}" .log): exit $status: $(grep -E '(passed|failed|skipped|error|no tests ran)' \
"${logs[$i]}" | tail -n 1)"
    (( status == 0 )) || rc=1
  done
  return $rc
}
export -f environment_facts pytest_interruptible kernel_tests

# ------------------------------------------------------------------------------------ the run
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "${t#0}"; }
started_us=$(now_us)
deadline_us=$((started_us + (BUDGET_S - PACK_MARGIN_S) * 1000000))
failed=0 extension_off=""
printf 'step\tlimit_s\tseconds\texit\tstatus\n' > "$out/steps.tsv"

write_summary() {
  {
    echo "# GPU check, $(date -Is)"
    echo
    sed -n '3,$p' "$WORK/environment.log" 2>/dev/null | sed 's/^/    /'
    echo
    echo "## Steps ($budget_line)"
    echo
    echo "| step | limit s | seconds | exit | status |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$out/steps.tsv" | awk -F'\t' '{print "| " $1 " | " $2 " | " $3 " | " $4 " | " $5 " |"}'
    [ -n "$extension_off" ] && printf '\n%s\n' "$extension_off"
    if [ -f "$WORK/build_cpp.log" ]; then
      echo; echo "## C++ extension"; echo; tail -n 4 "$WORK/build_cpp.log" | cut -c1-400 | sed 's/^/    /'
    fi
    echo; echo "## Kernel tests"; echo
    for log in "$WORK"/tests/*.log; do
      [ -f "$log" ] || continue
      echo "- $(basename "$log" .log): $(grep -E '(passed|failed|skipped|error|no tests ran)' "$log" | tail -n 1)"
      grep -E '^(FAILED|ERROR) ' "$log" | head -n 20 | cut -c1-300 | sed 's/^/  - /'
    done
    echo; echo "## EGNN-layer target, $EGNN_NODES nodes"; echo
    if [ -f "$WORK/egnn_target/summary.md" ]; then sed -n '3,$p' "$WORK/egnn_target/summary.md"
    else grep -h '^{"variant"' "$WORK/egnn_target.log" 2>/dev/null | sed 's/^/    /'; fi
    echo; echo "## Temporal convolution bandwidth"; echo
    if [ -f "$WORK/temporal_bandwidth/summary.md" ]; then sed -n '3,$p' "$WORK/temporal_bandwidth/summary.md"
    else grep -h '^{"case"' "$WORK/temporal_bandwidth.log" 2>/dev/null | sed 's/^/    /'; fi
    echo; echo "## Scale (the 4-layer model, H 128, P 8, forward+backward, Triton)"; echo
    grep -hE 'atoms|extrapolated' "$WORK/scale.log" 2>/dev/null | sed 's/^/    /'
  } > "$out/summary.md"
}

run_step() {  # name limit command
  local name=$1 limit=$2 command=$3 log=$WORK/$1.log start rc seconds status left
  left=$(( (deadline_us - $(now_us)) / 1000000 - KILL_AFTER_S ))
  (( left < limit )) && limit=$left  # never past the budget, whatever came before
  if (( limit < 1 )); then
    printf '%s\t%s\t0\t-\tskipped (no time left)\n' "$name" "$2" >> "$out/steps.tsv"; failed=1; return
  fi
  printf '== %s: limit %s s, %s\n$ %s\n' "$name" "$limit" "$(date -Is)" "$command" > "$log"
  start=$(now_us)
  # (the braces keep bash's "Killed" notice of a timeout that had to SIGKILL its process group off the output)
  { timeout -k "$KILL_AFTER_S" -s INT "$limit" bash -c "$command" >> "$log" 2>&1 < /dev/null; } 2>/dev/null
  rc=$?
  seconds=$(( ($(now_us) - start) / 100000 )); seconds="$((seconds / 10)).$((seconds % 10))"
  if (( rc == 0 )); then status=ok
  elif (( rc == 124 || rc == 137 )) && (( ${seconds%.*} >= limit )); then status="timeout"
  else status=failed; fi
  (( rc == 0 )) || failed=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$seconds" "$rc" "$status" >> "$out/steps.tsv"
  echo "[gpu_check] $name: $status (exit $rc, $seconds s of $limit s)"
  if [ "$name" = build_cpp ] && [ "$status" != ok ]; then
    export EGNO_FAST_NO_EXTENSION=1
    extension_off="The C++ extension did not build ($status): the later steps ran with EGNO_FAST_NO_EXTENSION=1."
    find "$EGNO_FAST_BUILD_DIR" -name build_error.log -mmin -5 -exec cp {} "$WORK/" \; 2>/dev/null
  fi
  write_summary
}

for i in "${!names[@]}"; do run_step "${names[$i]}" "${limits[$i]}" "${commands[$i]}"; done

# ------------------------------------------------------------------------------------ pack
write_summary
for log in "$WORK"/tests/*.log; do
  [ -f "$log" ] && { echo "==== $(basename "$log")"; tail -n 150 "$log"; echo; }
done > "$out/tests_tail.log"
cp "$out/summary.md" "$out/steps.tsv" "$WORK/"
tar -czf "$out/gpu_check.tar.gz" -C "$tmp" gpu_check
echo "[gpu_check] finished in $(( ($(now_us) - started_us) / 1000000 )) s, status $failed; $out: $(ls "$out" | tr '\n' ' ')"
head -c 8000 "$out/summary.md"
exit $failed
