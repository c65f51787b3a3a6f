#!/usr/bin/env bash
# The GPU checks and timings of the training-speed benchmark, in one go (on a machine with a CUDA GPU):
#
#     bash benchmarks/gpu_check.sh OUT_DIR [SECONDS]
#
# 1. the CUDA tests (tests/test_cuda.py: the GPU step against the straightforward one, CUDA-graph
#    replays against eager iterations);
# 2. bench_train.py at the top stage: (a) against (b) replayed from CUDA graphs, then (b) without graphs;
# 3. bench_train.py --stage all: the estimate of a whole paper-default run, and (b)'s peak memory per stage;
# 4. a real paper-default `consingan train` run on rocket.png at 250 px, timed (stopped at the time left
#    of SECONDS, default 560, counted from the start of this script).
# Everything goes to OUT_DIR/gpu_check.log too. Without an install: the repository root is put on PYTHONPATH.
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [SECONDS]}
BUDGET=${2:-560}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$OUT/gpu_check.log") 2>&1

step() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch, numpy, skimage, imageio, typer; print('torch', torch.__version__, torch.cuda.get_device_name(), \
'cudnn', torch.backends.cudnn.version(), 'tf32 conv', torch.backends.cudnn.allow_tf32, 'tf32 matmul', \
torch.backends.cuda.matmul.allow_tf32)"

step CUDA tests
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -25
GRAPHS_OK=${PIPESTATUS[0]}
if [ "$GRAPHS_OK" != 0 ]; then
    echo "CUDA tests failed: the timings below run without CUDA graphs"
    export CONSINGAN_CUDA_GRAPHS=0
fi

step "top stage: (a) against (b)"
$PY benchmarks/bench_train.py --device cuda --iters 20 --rounds 1 --warmup 3
step "top stage: (b) without CUDA graphs"
CONSINGAN_CUDA_GRAPHS=0 $PY benchmarks/bench_train.py --device cuda --iters 20 --rounds 1 --warmup 3 --only_b
step "whole-run estimate"
$PY benchmarks/bench_train.py --device cuda --stage all --iters 20 --rounds 1 --only_b

LEFT=$(( BUDGET - ($(date +%s) - START) ))
step "paper-default consingan train, rocket.png, 250 px (stopped after $LEFT s)"
rm -rf /tmp/gpu_check_run
time timeout "$LEFT" $PY -m consingan train --input_name Images/Generation/rocket.png --max_size 250 \
    --manualSeed 1 --device cuda --progress plain --out_dir /tmp/gpu_check_run > "$OUT/train.log" 2>&1
grep -E "iter (1|200|1000|2000)/|Model saved|rror" "$OUT/train.log" | sed 's/ loss_d.*at iter [0-9]*)//'
tail -2 "$OUT/train.log"
$PY - <<'EOF'
import pathlib
p = pathlib.Path("/tmp/gpu_check_run/model.pt")
if p.exists():
    import torch
    meta = torch.load(p, map_location="cpu", weights_only=False).get("meta", {})
    print("finished; model meta:", meta)
else:
    print("no model.pt: the run did not finish in time")
EOF
cp /tmp/gpu_check_run/5/samples_grid.png "$OUT/gpu_run_samples_grid.png" 2>/dev/null
step done
