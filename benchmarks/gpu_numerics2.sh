#!/usr/bin/env bash
# Issue 12's CIFAR-10 comparisons with DEFAULT flags on one lent GPU, all runs at once, inside one time budget.
#
#   bash benchmarks/gpu_numerics2.sh [BUDGET_SECONDS]      (default 480; writes to $OUT, else results/gpu-numerics2)
#
# Runs (every integer run with default numerics flags; float twin at its tuned lr 0.05, as before):
#   vgg7-35ep-{int,float}-s0       VGG-small-7, 35-epoch schedule, batch 128 (README's earlier H200 comparison)
#   q-40ep-{int,float}-s{0,1}      VGG-small-7-quarter (32-32-M-64-64-M-128-128-M), 40 epochs, batch 128
#   vgg7-3ep-{int,float}-s{0,1,2}  VGG-small-7, 3 epochs, batch 128 (the CPU target's schedule)
# A run the budget cuts short keeps its last checkpoint: re-running this script resumes every unfinished run
# (`niti train --resume`), bit-identically, so the comparison can be spread over several device sessions
# if the run directories are carried back (they are copied to $OUT/runs).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-480}
OUT=${OUT:-results/gpu-numerics2}
DATA=${NITI_DATA:-../shared/data}
RUNS=${RUNS:-runs/gpu-numerics2}
mkdir -p "$OUT" "$RUNS"
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print(torch.__version__)"; } \
    > "$OUT/machine.txt" 2>&1

launch() {  # NAME ARGS...
    local name=$1; shift
    local dir="$RUNS/$name"
    if [ -f "$dir/summary.json" ]; then return; fi
    if [ -f "$dir/checkpoint.pt" ]; then
        set -- --resume "$dir"
    else
        set -- "$@" --data-dir "$DATA" --no-download --device cuda --no-progress --threads 1 --out "$dir"
    fi
    echo "python3 -m niti train $*" >> "$OUT/commands.txt"
    timeout --signal=TERM "$BUDGET" python3 -m niti train "$@" > "$OUT/$name.log" 2>&1 &
}

V7="--model vgg-small-7 --dataset cifar10 --batch-size 128"
Q="--model vgg-small-7-quarter --dataset cifar10 --batch-size 128"
launch vgg7-35ep-int-s0 $V7 --epochs 35 --seed 0
launch vgg7-35ep-float-s0 $V7 --epochs 35 --seed 0 --arith float --lr 0.05
for s in 0 1; do
    launch q-40ep-int-s$s $Q --epochs 40 --seed $s
    launch q-40ep-float-s$s $Q --epochs 40 --seed $s --arith float --lr 0.05
done
for s in 0 1 2; do
    launch vgg7-3ep-int-s$s $V7 --epochs 3 --seed $s
    launch vgg7-3ep-float-s$s $V7 --epochs 3 --seed $s --arith float --lr 0.05
done
wait
# Issue 15: static vs per-batch inference shifts of a VGG-small-7 run (evaluated on this machine's CPUs).
for run in "$RUNS"/vgg7-3ep-int-s0 "$RUNS"/vgg7-35ep-int-s0; do
    if [ -f "$run/summary.json" ]; then
        timeout 300 python3 benchmarks/static_inference.py "$run" --data-dir "$DATA" --n-alone 200 --threads 8 \
            --results "$OUT/static-inference-$(basename "$run")" > "$OUT/static-inference-$(basename "$run").log" 2>&1
    fi
done
mkdir -p "$OUT/runs"
for dir in "$RUNS"/*/; do
    name=$(basename "$dir")
    mkdir -p "$OUT/runs/$name"
    cp "$dir"/*.json* "$OUT/runs/$name/" 2>/dev/null
    cp "$dir"/checkpoint.pt "$OUT/runs/$name/" 2>/dev/null   # for --resume in a later session
done
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = ["| run | epochs done | final test acc (%) | final val acc (%) | best val acc (%) |", "|---|---|---|---|---|"]
for d in sorted((out / "runs").iterdir()):
    m = d / "metrics.jsonl"
    hist = [json.loads(l) for l in m.read_text().splitlines()] if m.exists() else []
    if not hist:
        rows.append(f"| {d.name} | 0 | | | |")
        continue
    last = hist[-1]
    best = max(h.get("val_accuracy") or 0 for h in hist)
    rows.append(f"| {d.name} | {last['epoch']} | {last.get('test_accuracy')} | {last.get('val_accuracy')} | {best} |")
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
