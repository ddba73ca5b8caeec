"""Run a script with the emulated cupy in place of a GPU, its kernel table served as in the GPU tests:

    python tests/emulated_gpu/run_emulated.py benchmarks/gpu_bench.py --quick --only gcn,rnn

(the script's own folder comes first on the import path, so ``import cupy`` finds the emulated one).
Times mean nothing here; what it shows is that the script's host code runs.
"""
import runpy
import sys

import emulated_gpu_plugin

if __name__ == "__main__":
    emulated_gpu_plugin.install()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
