"""``python -m tapegrad profile [options] -- <subcommand | script.py> [args]``: run something under the profiler.

The target is a tapegrad subcommand (demo, gcn, charrnn) or a Python script; afterwards the kernel
table is printed, and optionally written as JSON, a Chrome/Perfetto trace and a roofline PNG.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        own, target = argv[:split], argv[split + 1:]
    else:
        own, target = [], argv
    parser = argparse.ArgumentParser(prog="python -m tapegrad profile",
                                     description="Run a tapegrad subcommand or a script under the kernel profiler.")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome / Perfetto trace")
    parser.add_argument("--roofline", metavar="FILE.png", help="write a roofline plot (needs matplotlib)")
    parser.add_argument("--limit", type=int, default=30, help="rows in the printed table (default 30)")
    args = parser.parse_args(own)
    if not target:
        parser.error("nothing to profile: give a subcommand or script after --, e.g. -- gcn --seeds 1")

    from ..engine.profiler import profile

    with profile(trace=args.trace is not None) as prof:
        code = _run_target(target)
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


def _run_target(target: list[str]) -> int:
    head, rest = target[0], target[1:]
    if head.endswith(".py"):
        if not os.path.exists(head):
            print(f"error: no such script: {head}", file=sys.stderr)
            return 1
        saved = sys.argv
        sys.argv = [head] + rest
        try:
            runpy.run_path(head, run_name="__main__")
        except SystemExit as e:
            return int(e.code or 0) if not isinstance(e.code, str) else 1
        finally:
            sys.argv = saved
        return 0
    from .. import __main__ as cli
    if head in ("profile", "bench"):
        print(f"error: cannot profile the {head!r} subcommand", file=sys.stderr)
        return 2
    try:
        return int(cli.main([head] + rest) or 0)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
