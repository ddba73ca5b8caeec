#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (and no network), run the tests marked `gpu` and the GPU
# benchmark cases, writing everything under ${OUT:-gpu_check_out}. Installs nothing; expects numba,
# numba-cuda, cupy, torch and torch-geometric to be importable already.
#   bash benchmarks/gpu_check.sh            # about 5-8 minutes on an H100
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
# The checkout folder may not be named tapegrad: make `import tapegrad` find this tree without installing.
if ! python -c "import tapegrad" 2>/dev/null; then
  link="$(mktemp -d)"
  ln -s "$(pwd)" "$link/tapegrad"
  export PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}"
fi
python - <<'PY' | tee "$out/device.txt"
import cupy, numba, tapegrad
p = cupy.cuda.runtime.getDeviceProperties(0)
print("device:", p["name"].decode(), "| cupy", cupy.__version__, "| numba", numba.__version__)
PY
timeout 240 python -m pytest -q -m gpu tests 2>&1 | tail -25 | tee "$out/gpu_tests.txt"
timeout 300 python benchmarks/bench.py --filter gpu/ --json "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.txt"
echo "results in $out/"
