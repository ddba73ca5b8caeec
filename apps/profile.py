"""``python -m tapegrad profile [options] [--] <subcommand | script.py> [args]``: run something under the profiler.

The target is a tapegrad subcommand (demo, gcn, charrnn) or a Python script; afterwards the kernel
table is printed, and optionally written as JSON, a Chrome/Perfetto trace and a roofline PNG. The
profile's own options come first; the first word that is not one of them (or everything after ``--``)
is the target and its arguments.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

# the options that take a value: the word after them is not the target
_VALUED = ("--json", "--trace", "--roofline", "--limit")
# subcommands that cannot run under the profiler (profile nests; bench and gpubench time things themselves)
_REFUSED = ("profile", "bench", "gpubench")


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the profile's own options, the target and its arguments)."""
    own: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return own, argv[i + 1:]
        if not word.startswith("-") or word == "-":
            break
        own.append(word)
        if word in _VALUED and i + 1 < len(argv):
            own.append(argv[i + 1])
            i += 1
        i += 1
    return own, argv[i:]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tapegrad profile", allow_abbrev=False,
        usage="%(prog)s [options] [--] {demo,gcn,charrnn | SCRIPT.py} [ARGS ...]",
        description="Run a tapegrad subcommand or a script under the kernel profiler, then print the "
                    "kernel table.",
        epilog="Example: python -m tapegrad profile --json p.json gcn --seeds 1. The first word that is not "
               "an option above (or everything after --) is the target and its arguments.")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome / Perfetto trace")
    parser.add_argument("--roofline", metavar="FILE.png", help="write a roofline plot (needs matplotlib)")
    parser.add_argument("--limit", type=int, default=30, help="rows in the printed table (default 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, target = _split(argv)
    parser = _parser()
    args = parser.parse_args(own)
    if args.limit < 1:
        parser.error("--limit must be >= 1")
    if not target:
        parser.error("nothing to profile: give a subcommand or a script, e.g. gcn --seeds 1")
    problem = _cannot_start(target)
    if problem is not None:  # nothing ran: no table, and no peak probe
        code, message = problem
        print(f"python -m tapegrad profile: error: {message}", file=sys.stderr)
        return code

    from ..engine.profiler import profile

    with profile(trace=args.trace is not None) as prof:
        code = _run_target(target)
    if not prof.stats:
        # the target stopped before running anything (its --help or an argument error, say): no table
        print(f"python -m tapegrad profile: no kernel or op ran (the target exited with code {code}); "
              "nothing to report", file=sys.stderr)
        return code
    print()
    print(prof.table(limit=args.limit))
    if args.json:
        prof.to_json(args.json)
        print(f"rows written to {args.json}")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace written to {args.trace} (open in https://ui.perfetto.dev or chrome://tracing)")
    if args.roofline:
        prof.roofline(args.roofline)
        print(f"roofline written to {args.roofline}")
    return code


def _cannot_start(target: list[str]) -> tuple[int, str] | None:
    """(exit code, message) when the target cannot run at all: an unknown or refused subcommand, a
    missing script."""
    head = target[0]
    if head.endswith(".py"):
        return None if os.path.isfile(head) else (1, f"no such script: {head}")
    from .. import __main__ as cli
    if head in _REFUSED:
        return 2, f"cannot profile the {head!r} subcommand"
    if head not in cli.COMMANDS:
        runnable = ", ".join(c for c in cli.COMMANDS if c not in _REFUSED)
        return 2, f"unknown target {head!r}: give a subcommand ({runnable}) or a script ending in .py"
    return None


def _run_target(target: list[str]) -> int:
    head, rest = target[0], target[1:]
    if head.endswith(".py"):
        saved = sys.argv
        sys.argv = [head] + rest
        try:
            runpy.run_path(head, run_name="__main__")
        except SystemExit as e:
            return _exit_code(e)
        finally:
            sys.argv = saved
        return 0
    from .. import __main__ as cli
    try:
        return int(cli.main([head] + rest) or 0)
    except SystemExit as e:
        return _exit_code(e)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1
