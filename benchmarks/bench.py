"""tapegrad's benchmark suite: tapegrad vs scipy, torch and torch_geometric, interleaved, same inputs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--quick] [--json FILE] [--filter SUBSTR]

The same as ``python -m tapegrad bench``; the cases and options are documented in
:mod:`tapegrad.apps.bench` (``--help``, ``--list``).
"""
import sys

from tapegrad.apps.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
