#!/usr/bin/env bash
# GPU readiness check, one command on one H100/H200 (under 8 minutes), one results file:
#   1. the CUDA tests (`-m gpu`, and every test that skips without CUDA),
#   2. the bf16 fidelity check (scripts/precision_check.py, when this checkout has it),
#   3. the benchmark (python -m sam_lab.bench) of ResNet-18 and WRN-28-10, SGD and SAM, against the reference
#      loop, and PASS/FAIL for each performance target (docs/performance.md).
#
# Usage: scripts/gpu_check.sh [--out FILE] [--wheels DIR] [--dry-run]
#        scripts/gpu_check.sh --judge BENCH.json      (the PASS/FAIL lines for an existing bench result)
#   --out FILE    results file (default: $OUT/gpu_check.txt where $OUT is set, else ./gpu_check.txt)
#   --wheels DIR  a machine with torch but without the rest (hydra-core, omegaconf, pytest, ...): install
#                 every wheel in DIR, offline, into a temporary folder put on PYTHONPATH. Nothing else is
#                 ever installed.
#   --dry-run     print the commands, run nothing
# Exit status: 0 when every step ran and every target passed, 1 otherwise, 2 for a usage error.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RESULTS="${OUT:-.}/gpu_check.txt"
WHEELS="" DRY=0 JUDGE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) RESULTS="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --judge) JUDGE="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# The targets, read from the bench's --json rows (keys of sam_lab.perf.run_bench): s_per_epoch = seconds per
# 50k-image epoch, vs_sgd = SAM/SGD step-time ratio, speedup = reference loop ms/step / ours.
judge() {
    "$PYTHON" - "$1" <<'EOF'
import json, math, sys

rows = json.load(open(sys.argv[1]))["rows"]
ours = {(r["model"], r["optimizer"]): r for r in rows if r["impl"] == "ours"}
targets = [  # (what, model, optimizer, key, "<=" or ">=", bound)
    ("ResNet-18 SAM s per 50k-image epoch", "resnet18", "sam", "s_per_epoch", "<=", 1.5),
    ("WRN-28-10 SAM s per 50k-image epoch", "wrn28_10", "sam", "s_per_epoch", "<=", 12.0),
    ("ResNet-18 SAM/SGD step time", "resnet18", "sam", "vs_sgd", "<=", 2.05),
    ("WRN-28-10 SAM/SGD step time", "wrn28_10", "sam", "vs_sgd", "<=", 2.05),
]
targets += [
    (f"{name} {opt.upper()} speed-up over the reference loop", model, opt, "speedup", ">=", 5.0)
    for model, name in (("resnet18", "ResNet-18"), ("wrn28_10", "WRN-28-10"))
    for opt in ("sgd", "sam")
]
failed = 0
for what, model, opt, key, op, bound in targets:
    value = ours.get((model, opt), {}).get(key, math.nan)
    ok = value <= bound if op == "<=" else value >= bound  # NaN (not measured) fails both
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {what}: {value:.3f} (target {op} {bound})")
sys.exit(1 if failed else 0)
EOF
}
if [ -n "$JUDGE" ]; then
    judge "$JUDGE"
    exit $?
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
BENCH_JSON="$WORK/bench.json"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PIP=("$PYTHON" -m pip install --quiet --no-index --no-deps --target "$WORK/site")
# Tests that need CUDA: the `gpu` marker, or a skip whose reason names CUDA; plus the device=cuda effect.
PICK_CUDA_TESTS='
import sys, pytest
class Pick:
    def pytest_collection_modifyitems(self, config, items):
        def cuda(item):
            skips = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")]
            named = item.nodeid.endswith("test_setting_reaches_its_effect[device]")
            return named or item.get_closest_marker("gpu") or any("CUDA" in s for s in skips)
        items[:] = [i for i in items if cuda(i)]
args = ["-q", "-rs", "-p", "no:cacheprovider", "--continue-on-collection-errors", "tests"]
sys.exit(pytest.main(args, plugins=[Pick()]))
'
BENCH=("$PYTHON" -m sam_lab.bench --models resnet18 wrn28_10 --optimizers sgd sam --device cuda
    --batch-size 128 --steps 20 --repeats 5 --warmup 10 --images 50000 --ref-workers 4 --json "$BENCH_JSON")
PRECISION=("$PYTHON" scripts/precision_check.py --device cuda)

if [ "$DRY" = 1 ]; then
    [ -n "$WHEELS" ] && echo "${PIP[*]} $WHEELS/*.whl  # then PYTHONPATH=...:$WORK/site"
    echo "$PYTHON -c '<pick the CUDA tests>' # -m gpu, skipif(reason ~ CUDA), device=cuda effect (tests/)"
    echo "${PRECISION[*]}"
    echo "${BENCH[*]}"
    echo "scripts/gpu_check.sh --judge $BENCH_JSON"
    echo "# results: $RESULTS"
    rm -rf "$WORK"
    exit 0
fi

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, report its exit status and duration
    local name="$1" limit="$2" t0=$SECONDS rc
    shift 2
    echo
    echo "=== $name: $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    rc=$?
    [ $rc -ne 0 ] && status=1
    echo "=== $name: exit $rc after $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo " (time limit $limit s)")"
}

main() {
cd "$ROOT" || return 1
echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/# /'
if [ -n "$WHEELS" ]; then
    echo "# installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $WORK/site (offline)"
    "${PIP[@]}" "$WHEELS"/*.whl || { echo "FAIL  could not install the wheels from $WHEELS"; return 1; }
    PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
export PYTHONPATH WANDB_MODE=disabled
"$PYTHON" -c "import torch, sys; print('# python', sys.version.split()[0], '| torch', torch.__version__,
    '| cuda', torch.version.cuda, '| available:', torch.cuda.is_available())"
if ! "$PYTHON" -c "import hydra, omegaconf, pytest, scipy, tqdm" 2>/dev/null; then
    echo "FAIL  hydra-core, omegaconf, pytest, scipy or tqdm is missing: pass --wheels DIR (docs/performance.md)"
    return 1
fi

step "CUDA tests" 120 "$PYTHON" -c "$PICK_CUDA_TESTS"
if [ -f scripts/precision_check.py ]; then
    step "bf16 fidelity" 90 "${PRECISION[@]}"
else
    echo; echo "=== bf16 fidelity: SKIPPED (scripts/precision_check.py is not in this checkout)"
fi
step "benchmark" 210 "${BENCH[@]}"
echo
echo "=== targets (H100/H200, batch 128, bf16)"
if [ -f "$BENCH_JSON" ]; then
    judge "$BENCH_JSON" || status=1
else
    echo "FAIL  no benchmark result"; status=1
fi
echo
echo "# gpu_check: $([ $status -eq 0 ] && echo 'all steps ran, all targets met' || echo 'something FAILED (above)')"
return $status
}

mkdir -p "$(dirname "$RESULTS")"
main 2>&1 | tee "$RESULTS"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
