#!/usr/bin/env bash
# One call on a lent GPU machine: CUDA tests (incl. the no-sync test), the overhead bench on CUDA, the CLI on CUDA.
# Expects the Fashion-MNIST IDX files in .data/ and missing wheels in .whl/ (see README, "Checking on a GPU").
set -u -o pipefail  # a failing step fails its pipe into tail; every step still runs, and the script exits 1 at the end
failed=0
export PYTHONUNBUFFERED=1 MINIAI_DATA=$PWD/.data MINIAI_CACHE=/tmp/miniai-cache MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "== CUDA tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ -x 2>&1 | tail -15 || failed=1
echo "== core tests on a CUDA machine"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_learner.py tests/test_callbacks.py tests/test_scheduling.py tests/test_guards.py -m "not slow" 2>&1 | tail -5 || failed=1
echo "== CLI on CUDA"
timeout 120 python3 -m miniai train --epochs 3 --lr 2e-2 --device cuda 2>&1 | tail -8 || failed=1
echo "== bench on CUDA"
timeout ${BENCH_TIMEOUT:-300} python3 bench/overhead.py --device cuda --reps 5 2>&1 | tee ${OUT:-/tmp}/bench_cuda.txt | tail -40 || failed=1
[ "$failed" = 0 ] && echo "== all steps passed" || echo "== A STEP FAILED (see above)"
exit "$failed"
