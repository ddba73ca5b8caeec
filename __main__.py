"""``python -m tapegrad {demo,gcn,charrnn,bench,gpubench,profile} [options]``: the command-line entry point.

Each subcommand is the ``main(argv)`` of a module in :mod:`tapegrad.apps`, which parses its own options
(``python -m tapegrad charrnn --help``). Exit codes: 0 success, 1 a run-time error such as a missing
data file (one line on stderr, no traceback), 2 bad arguments or an unavailable subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

# subcommand -> (module that holds its main(argv), one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tapegrad.apps.demo", "train a GCN on Cora and a char-LSTM on Tiny Shakespeare (about a minute)"),
    "gcn": ("tapegrad.apps.gcn", "train the two-layer GCN of Kipf & Welling on a Planetoid graph"),
    "charrnn": ("tapegrad.apps.charrnn", "train a character-level LSTM language model on a text file"),
    "bench": ("tapegrad.apps.bench", "time the kernels and layers"),
    "gpubench": ("tapegrad.apps.gpu_bench", "time the GPU kernels and layers against cuSPARSE, torch and cuDNN"),
    "profile": ("tapegrad.apps.profile", "profile a training run, kernel by kernel"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tapegrad",
        description="tapegrad: a small tape autodiff engine with GCN, RNN and LSTM layers.",
        epilog="Run 'python -m tapegrad COMMAND --help' for the options of a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load_main(command: str):
    module_name = COMMANDS[command][0]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return None
    return importlib.import_module(module_name).main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / the error and exits (0 for --help, 2 otherwise)
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    sub_main = _load_main(command)
    if sub_main is None:
        print(f"{parser.prog} {command}: this build of tapegrad has no {COMMANDS[command][0]} module, "
              f"so '{command}' is not available", file=sys.stderr)
        return 2
    try:
        code = sub_main(rest)
    except FileNotFoundError as e:
        missing = e.filename if e.filename else str(e)
        print(f"{parser.prog} {command}: error: file not found: {missing}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
