"""Run a script with the emulated cupy in place of a GPU, its kernel table served as in the GPU tests:

    python tests/emulated_gpu/run_emulated.py benchmarks/gpu_bench.py --quick --only gcn,rnn
    python tests/emulated_gpu/run_emulated.py -m tapegrad gcn --device cuda --seeds 1

(the script's own folder comes first on the import path, so ``import cupy`` finds the emulated one).
Times mean nothing here; what it shows is that the script's host code runs.
"""
import runpy
import sys

import emulated_gpu_plugin

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    emulated_gpu_plugin.install()
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
