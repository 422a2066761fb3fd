#!/usr/bin/env bash
# The GPU check: the one script a session with a GPU runs, from a checkout (no install) where CuPy imports.
#
#   scripts/gpu_check.sh [results_dir]          (default bench/results)
#
# Steps, each recorded as passed or failed (a failed step does not stop the next):
#   gpu-tests   python -m pytest -m gpu -q                      every gpu-marked test of the suite
#   memcheck    compute-sanitizer --tool memcheck  ... tests/test_kernels_gpu.py   with CUBN_SANITIZER=1
#   racecheck   compute-sanitizer --tool racecheck ... tests/test_kernels_gpu.py   (small shapes, one
#               cudaMalloc per array; see that file's docstring)
# Writes <results_dir>/gpu-check-<gpu-name>.json and .md and exits 1 if any step failed.
# Environment: COMPUTE_SANITIZER (path of compute-sanitizer, else PATH, else /usr/local/cuda/bin),
# GPU_CHECK_STEP_TIMEOUT (seconds per step, default 600; a step cut off is recorded with rc 124).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
out_dir=${1:-bench/results}
step_timeout=${GPU_CHECK_STEP_TIMEOUT:-600}
sanitizer=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
mkdir -p "$out_dir"

nvidia-smi || echo "nvidia-smi failed"
SANITIZER="$sanitizer" python - "$logs/versions.json" <<'EOF' || { echo "no GPU answers through CuPy: nothing to check"; exit 1; }
import json, os, platform, subprocess, sys
import cupy, numpy
from cubn import backend
assert backend.has_gpu(), "cubn.backend.has_gpu() is False"
rt = cupy.cuda.runtime
try:
    sanitizer = subprocess.run([os.environ["SANITIZER"], "--version"], capture_output=True, text=True).stdout.strip()
except OSError as e:
    sanitizer = f"not found: {e}"
versions = {
    "gpu": rt.getDeviceProperties(0)["name"].decode(), "driver": rt.driverGetVersion(),
    "cuda_runtime": rt.runtimeGetVersion(), "python": platform.python_version(), "numpy": numpy.__version__,
    "cupy": cupy.__version__, "compute_sanitizer": sanitizer.splitlines()[-1] if sanitizer else "",
    "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip(),
}
json.dump(versions, open(sys.argv[1], "w"), indent=1)
print(json.dumps(versions, indent=1))
EOF

# step <name> <command...>: run it under the step timeout, log its output, record name, rc, seconds, command
step() {
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    timeout "$step_timeout" "$@" 2>&1 | tee "$logs/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "${PIPESTATUS[0]}" "$((SECONDS - start))" "$*" >> "$logs/steps.tsv"
}
step gpu-tests python -m pytest -m gpu -q
for tool in memcheck racecheck; do
    step "$tool" env CUBN_SANITIZER=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
        python -m pytest -m gpu -q tests/test_kernels_gpu.py
done

python - "$logs" "$out_dir" <<'EOF'
import datetime, json, pathlib, re, sys
logs, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
report = json.loads((logs / "versions.json").read_text())
report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
report["steps"] = []
for line in (logs / "steps.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t")
    log = (logs / f"{name}.log").read_text(errors="replace").splitlines()
    summary = [l for l in log if re.search(r"\d+ (passed|failed|errors?|skipped)\b|ERROR SUMMARY", l)][-2:]
    step = {"name": name, "command": command, "returncode": int(rc), "passed": rc == "0",
            "seconds": int(seconds), "summary": summary}
    if rc != "0":
        step["tail"] = log[-30:]
    report["steps"].append(step)
report["passed"] = all(s["passed"] for s in report["steps"])
slug = re.sub(r"[^a-z0-9]+", "-", report["gpu"].lower()).strip("-")
base = out_dir / f"gpu-check-{slug}"
base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
md = [f"# GPU check on {report['gpu']}: {'PASSED' if report['passed'] else 'FAILED'}", "",
      f"{report['date']}, commit {report['commit']}; driver {report['driver']}, CUDA runtime "
      f"{report['cuda_runtime']}, Python {report['python']}, NumPy {report['numpy']}, CuPy {report['cupy']}; "
      f"{report['compute_sanitizer']}", "", "| step | result | seconds | summary |", "|---|---|---|---|"]
md += [f"| {s['name']} | {'pass' if s['passed'] else 'FAIL (rc %d)' % s['returncode']} | {s['seconds']} | "
       f"{'; '.join(s['summary'])} |" for s in report["steps"]]
for s in report["steps"]:
    if not s["passed"]:
        md += ["", f"## {s['name']}: `{s['command']}`", "", "```", *s["tail"], "```"]
base.with_suffix(".md").write_text("\n".join(md) + "\n")
print(f"wrote {base}.json and {base}.md")
sys.exit(0 if report["passed"] else 1)
EOF
