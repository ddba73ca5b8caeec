#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (and no network), run the tests marked `gpu` and the GPU
# benchmarks, writing logs and JSON under ${OUT:-gpu_check_out}. Installs nothing; expects numba,
# numba-cuda, cupy, pytest and (for the peers) torch to be importable already. pubmed.npz is read from
# $TAPEGRAD_DATA (default ../shared/data). About 6 minutes on an H200; the timeouts bound it at 8
# (10 + 20 + 160 + 40 + 180 + 25 + 2 x 20 = 475 s, and a few seconds of imports between them).
#   bash benchmarks/gpu_check.sh [gpu_bench.py options, e.g. --quick or --graphs pubmed,rmat16]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# The checkout folder may not be named tapegrad: make `import tapegrad` find this tree without installing.
if ! python -c "import tapegrad" 2>/dev/null; then
  link="$(mktemp -d)"
  ln -s "$(pwd)" "$link/tapegrad"
  export PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  timeout 20 python - <<'PY'
import cupy, numba, tapegrad
p = cupy.cuda.runtime.getDeviceProperties(0)
print("device:", p["name"].decode(), "| cupy", cupy.__version__, "| numba", numba.__version__)
from numba import cuda
print("numba-cuda sees the GPU:", cuda.is_available())
PY
} 2>&1 | tee "$out/device.txt"
# Several test processes when pytest-xdist is there: most of the time goes to compiling kernels (about
# 2 minutes with 8 processes on an H200 machine's 16 cores).
par=""
python -c "import xdist" 2>/dev/null && par="-n 8"
timeout 160 python -m pytest -q -m gpu -p no:cacheprovider --tb=short -rs $par \
  tests/test_kernels_gpu.py tests/test_gpu_engine.py tests/test_cupy_rules.py > "$out/gpu_tests.txt" 2>&1
echo "gpu tests exit code: $?" | tee -a "$out/gpu_tests.txt"
grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$out/gpu_tests.txt" | tail -40
grep -qE "[0-9]+ passed" "$out/gpu_tests.txt" || echo "NO GPU TEST PASSED: see $out/gpu_tests.txt (is the GPU reachable?)"
# Two processes, so that a fault in one group of cases (a CUDA error is sticky) leaves the other's numbers.
timeout 40 python benchmarks/gpu_bench.py --only rnn --json "$out/gpu_bench_rnn.json" "$@" 2>&1 | tee "$out/gpu_bench.txt"
timeout 180 python benchmarks/gpu_bench.py --only launch,gcn,spmm --json "$out/gpu_bench.json" "$@" 2>&1 \
  | tee -a "$out/gpu_bench.txt"
timeout 25 python benchmarks/gpu_profile.py > "$out/gpu_profile.txt" 2>&1
echo "profile exit code: $? (host-time profiles in $out/gpu_profile.txt)"
# Host time per launch drifts with the shared host from process to process: two more processes, so that
# the target is read as a median of three.
for i in 2 3; do
  echo "== launch process $i" >> "$out/gpu_launch_more.txt"
  timeout 20 python benchmarks/gpu_bench.py --only launch >> "$out/gpu_launch_more.txt" 2>&1
done
echo "host us per launch, processes 1 2 3:"
for row in "spmm kernel (cupy)" "lstm_cell_fwd kernel (cupy)" "spmm kernel (numba-cuda)" "lstm_cell_fwd kernel (numba-cuda)"; do
  echo "  $row: $(cat "$out/gpu_bench.txt" "$out/gpu_launch_more.txt" | grep -F "  $row:" | sed 's/.*: //' | tr '\n' ' ')"
done
echo "results in $out/"
