#!/usr/bin/env bash
# Times the README's two commands as a new user runs them: a clean clone of the last commit, a new virtual
# environment and a new home folder (no pip, data or extension caches), the CPU torch wheel pre-installed as CI has
# it. The commands are read from the README itself. Writes OUT_DIR/timings.json and the logs of each step.
#   bash benchmarks/fresh_machine.sh OUT_DIR [TORCH_REQUIREMENT]      (default torch==2.13.0)
# Steps: torch wheel; the main command's install part; `egno-fast train` (first use: compiles the C++ extension);
# the test command (with CI's EGNO_FAST_REQUIRE_EXTENSION=1 MAX_JOBS=2; the extension is already cached by then).
set -euo pipefail
out=$(realpath -m "${1:?usage: fresh_machine.sh OUT_DIR [TORCH_REQUIREMENT]}")
torch_requirement=${2:-torch==2.13.0}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/home"
git clone -q "$repo" "$work/clone"
python3 -m venv "$work/venv"
export HOME="$work/home" XDG_CACHE_HOME="$work/home/.cache"
unset EGNO_FAST_BUILD_DIR EGNO_FAST_DATA EGNO_FAST_MOCAP
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
cd "$work/clone"
# The README's fenced bash blocks: the first is the main job, the second the tests.
mapfile -t commands < <(python3 - <<'EOF'
import re
blocks = re.findall(r"```bash\n(.*?)```", open("README.md").read(), flags=re.S)
print(blocks[0].strip()); print(blocks[1].strip())
EOF
)
main_command=${commands[0]}
test_command=${commands[1]}
install_command=${main_command% && egno-fast train}
[ "$install_command && egno-fast train" = "$main_command" ] || { echo "the main command does not end with egno-fast train"; exit 2; }

now() { date +%s.%N; }
seconds() { python3 -c "print(round($2 - $1, 1))"; }
t0=$(now); python3 -m pip install -q "$torch_requirement" > "$out/torch.log" 2>&1; t1=$(now)
bash -c "$install_command" > "$out/install.log" 2>&1; t2=$(now)
egno-fast train --no-progress > "$out/main_job.log" 2>&1; t3=$(now)
set +e
EGNO_FAST_REQUIRE_EXTENSION=1 MAX_JOBS=2 bash -c "$test_command" > "$out/tests.log" 2>&1
test_status=$?
set -e
t4=$(now)
sed -i '/^WARNING: Location .* is ignored/d' "$out"/*.log  # pip's notes on this machine's empty index folders
python3 - "$out" "$(git rev-parse --short HEAD)" "$(seconds "$t0" "$t1")" "$(seconds "$t1" "$t2")" \
  "$(seconds "$t2" "$t3")" "$(seconds "$t3" "$t4")" "$test_status" "$main_command" "$test_command" <<'EOF'
import json, os, platform, re, sys
from pathlib import Path
import torch
out, commit, torch_s, install_s, main_s, tests_s, status, main_command, test_command = sys.argv[1:]
main_log = (Path(out) / "main_job.log").read_text()
tests_tail = (Path(out) / "tests.log").read_text().strip().splitlines()[-1]
build = re.search(r"C\+\+ extension built in (\d+) s", main_log)
training = re.search(r"\(([\d.]+) min of training\)", main_log)
record = {"commit": commit, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
          "main_command": main_command, "test_command": test_command,
          "torch_wheel_s": float(torch_s), "install_s": float(install_s), "main_job_s": float(main_s),
          "extension_build_s": int(build.group(1)) if build else None,
          "main_job_training_min": float(training.group(1)) if training else None,
          "test_command_s": float(tests_s), "test_status": int(status), "tests_summary": tests_tail}
(Path(out) / "timings.json").write_text(json.dumps(record, indent=1) + "\n")
print(json.dumps(record, indent=1))
EOF
exit "$test_status"
