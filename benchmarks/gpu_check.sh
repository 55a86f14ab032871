#!/usr/bin/env bash
# GPU check (issue 15), one command, under 8 minutes on one GPU:
#
#   1. installs JAX's CUDA 12 build at the installed JAX version (skipped if a GPU backend is
#      already there);
#   2. runs the simulator benchmark (benchmarks/bench_simulate.py, 1:1 workload at
#      saturation) at 65,536 and 262,144 trajectories;
#   3. runs benchmarks/bench_sweep.py if it exists (skipped, and said so, if not);
#   4. runs the simulator equivalence tests (JAX vs the plain-Python reference) on the GPU;
#   5. writes one JSON record: throughput, compile time, memory per trajectory, test outcome
#      (benchmarks/results/gpu_check_<backend>.json, or $GPU_CHECK_OUT).
#
#   bash benchmarks/gpu_check.sh               # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-small   # the same steps, tiny, on CPU, no install
#                                              # (or GPU_CHECK_CPU_SMALL=1; tests use it)
#
# Environment: PYTHON (default: python3), GPU_CHECK_OUT (the record), GPU_CHECK_STEPS
# (benchmark steps; default 2048, 256 with --cpu-small), GPU_CHECK_SIZES (trajectory
# counts, space-separated). Exit status: 0 when every step ran clean, 1 otherwise.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
SMALL="${GPU_CHECK_CPU_SMALL:-0}"
for a in "$@"; do
  case "$a" in
    --cpu-small) SMALL=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (allowed: --cpu-small)" >&2; exit 2 ;;
  esac
done

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
STATUS=0
T_START=$(date +%s)

if [ "$SMALL" = 1 ]; then
  export JAX_PLATFORMS=cpu
  SIZES="${GPU_CHECK_SIZES:-64 128}"
  STEPS="${GPU_CHECK_STEPS:-256}"
  REF_STEPS=64
  # one small slice of the equivalence tests: the same command, a fraction of the cases
  TEST_ARGS=(-k "test_saturated_and_empty_system or test_batch_time_models_match_reference")
  BACKEND_WANTED=cpu
else
  SIZES="${GPU_CHECK_SIZES:-65536 262144}"
  STEPS="${GPU_CHECK_STEPS:-2048}"
  REF_STEPS=256
  TEST_ARGS=()
  BACKEND_WANTED=gpu
  if [ "$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" != gpu ]; then
    JAXV="$("$PY" -c 'import jax; print(jax.__version__)')"
    echo "== installing jax[cuda12]==$JAXV"
    timeout 240 "$PY" -m pip install -q "jax[cuda12]==$JAXV" || STATUS=1
  fi
fi
# Compile times are measured, so the persistent compile cache stays out of it.
export KVSTAB_CACHE_DIR=off

BACKEND="$("$PY" -c 'import kvstab, jax; print(jax.default_backend())')"
echo "== backend $BACKEND ($("$PY" -c 'import kvstab, jax; print(jax.devices()[0])'))"
if [ "$BACKEND" != "$BACKEND_WANTED" ]; then
  echo "gpu_check.sh: wanted backend $BACKEND_WANTED, JAX has $BACKEND" >&2
  STATUS=1
fi

for n in $SIZES; do
  echo "== simulator benchmark: $n trajectories x $STEPS steps"
  timeout 300 "$PY" "$HERE/bench_simulate.py" --trajectories "$n" --steps "$STEPS" \
    --repeat 3 --reference-steps "$REF_STEPS" --out "$WORK/sim_$n.json" || STATUS=1
done

SWEEP_RC=skipped
if [ -f "$HERE/bench_sweep.py" ]; then
  SWEEP_ARGS=(--out "$WORK/sweep.json")
  if [ "$SMALL" = 1 ]; then
    if grep -q -- "--small" "$HERE/bench_sweep.py"; then
      SWEEP_ARGS+=(--small)
    else
      SWEEP_ARGS=()
    fi
  fi
  if [ "$SMALL" = 1 ] && [ ${#SWEEP_ARGS[@]} -eq 0 ]; then
    echo "== sweep benchmark: skipped (bench_sweep.py has no --small mode for a CPU run)"
    SWEEP_RC="skipped: no --small mode"
  else
    echo "== sweep benchmark"
    timeout 240 "$PY" "$HERE/bench_sweep.py" "${SWEEP_ARGS[@]}"
    SWEEP_RC=$?
    [ "$SWEEP_RC" = 0 ] || STATUS=1
  fi
else
  echo "== sweep benchmark: skipped (benchmarks/bench_sweep.py not present)"
  SWEEP_RC="skipped: benchmarks/bench_sweep.py not present"
fi

echo "== simulator equivalence tests on $BACKEND"
T0=$(date +%s)
(cd "$ROOT" && timeout 300 "$PY" -m pytest tests/test_simulate_equivalence.py -q -x \
  -p no:cacheprovider "${TEST_ARGS[@]}" 2>&1 | tail -3 | tee "$WORK/tests.txt")
TEST_RC=${PIPESTATUS[0]}
[ "$TEST_RC" = 0 ] || STATUS=1
TEST_S=$(( $(date +%s) - T0 ))

OUT="${GPU_CHECK_OUT:-$HERE/results/gpu_check_$BACKEND.json}"
"$PY" - "$WORK" "$OUT" "$SWEEP_RC" "$TEST_RC" "$TEST_S" "$(( $(date +%s) - T_START ))" \
  "$SMALL" <<'EOF'
import glob, json, os, sys

from kvstab.results import write_json

work, out, sweep_rc, test_rc, test_s, total_s, small = sys.argv[1:8]
keep = ("trajectories", "steps", "compile_s", "run_s", "completed_per_s",
        "trajectory_steps_per_s", "state_bytes_per_trajectory", "workload_bytes_per_trajectory",
        "device_peak_bytes", "device_peak_bytes_per_trajectory", "flags", "jax_devices")
sims = []
for path in sorted(glob.glob(os.path.join(work, "sim_*.json")), key=os.path.getmtime):
    r = json.load(open(path))["result"]
    sims.append({k: r.get(k) for k in keep})
    device = r["device"]
sweep = None
if os.path.exists(os.path.join(work, "sweep.json")):
    sweep = json.load(open(os.path.join(work, "sweep.json")))
tests = open(os.path.join(work, "tests.txt")).read().strip().splitlines()
rec = {
    "kind": "gpu_check",
    "mode": "cpu-small" if small == "1" else "gpu",
    "device": device if sims else None,
    "simulate": sims,
    "sweep": sweep,
    "sweep_status": sweep_rc,
    "equivalence_tests": {"exit_status": int(test_rc), "summary": tests[-1] if tests else "",
                          "wall_s": int(test_s)},
    "wall_s": int(total_s),
}
write_json(out, rec)
print(f"{'trajectories':>12s} {'steps':>6s} {'compile s':>9s} {'completed/s':>13s} "
      f"{'state B/traj':>12s} {'device B/traj':>13s}")
for s in sims:
    dev = s["device_peak_bytes_per_trajectory"]
    print(f"{s['trajectories']:12d} {s['steps']:6d} {s['compile_s']:9.2f} "
          f"{s['completed_per_s']:13,.0f} {s['state_bytes_per_trajectory']:12,.0f} "
          f"{'n/a' if dev is None else f'{dev:,.0f}':>13s}")
print(f"sweep: {sweep_rc}; equivalence tests: {rec['equivalence_tests']['summary']}")
print(f"wrote {out} ({total_s} s)")
EOF
[ $? = 0 ] || STATUS=1
exit $STATUS
