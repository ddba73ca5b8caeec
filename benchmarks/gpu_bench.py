"""The GPU benchmarks: tapegrad's GPU kernels and layers against cuSPARSE, torch.sparse and cuDNN.

    python benchmarks/gpu_bench.py [--json FILE] [--quick] [--only GROUPS] [--graphs LIST]

The same as ``python -m tapegrad gpubench``; the cases are documented in :mod:`tapegrad.apps.gpu_bench`.
"""
import sys

from tapegrad.apps.gpu_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
