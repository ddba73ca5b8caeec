"""Running a second pytest in a child process, for test runs that need another process setting: the CUDA
simulator (NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported) and the emulated cupy (which
must come before any real cupy on the import path)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def summary_counts(output: str) -> dict[str, int]:
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's last summary line."""
    pattern = re.compile(r"\d+ (passed|failed|skipped|error)")
    lines = [line for line in output.strip().splitlines() if pattern.search(line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def run_pytest(args: list[str], env: dict[str, str]) -> tuple[int, str, dict[str, int]]:
    """(exit code, output, summary counts) of ``python -m pytest -q -rfEs <args>`` run from the repository
    root; the output's tail is printed, so that a failing test shows the child's failures."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    print(output[-20000:])
    return proc.returncode, output, summary_counts(proc.stdout)
