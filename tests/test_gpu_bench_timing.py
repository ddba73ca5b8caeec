"""The GPU benchmark's host-time harness (apps/gpu_bench.py), checked on the CPU with plain callables.

The launch rows of ``python -m tapegrad gpubench`` time each case round by round, the cases taking
turns, with each case's set-up (a launch path switched on or off) around each of its rounds, and give
each row the median of its per-round ratio to a peer.
"""
from __future__ import annotations

import contextlib

import numpy as np

from tapegrad.apps.gpu_bench import _host_per_call, _launch_rows


def test_cases_take_turns_round_by_round_inside_their_mode():
    log = []

    def mode_of(name):
        @contextlib.contextmanager
        def mode():
            log.append(("enter", name))
            yield
            log.append(("exit", name))
        return mode
    cases = {name: (lambda name=name: log.append(("call", name)), calls, mode_of(name))
             for name, calls in (("a", 2), ("b", 3))}
    samples = _host_per_call(cases, sync=lambda: log.append(("sync",)), rounds=4)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert all(s > 0 for v in samples.values() for s in v)
    timed = [e for e in log[log.index(("sync",)):] if e[0] != "sync"]  # after the warm-up calls
    one_round = [("enter", "a")] + [("call", "a")] * 2 + [("exit", "a")] + \
        [("enter", "b")] + [("call", "b")] * 3 + [("exit", "b")]
    assert timed == one_round * 4
    warm = log[:log.index(("sync",))]
    assert warm.count(("call", "a")) == 3 and warm.count(("call", "b")) == 3


def test_rows_give_medians_and_per_round_ratios_to_the_peer():
    samples = {"ours": [2e-6, 9e-6, 3e-6], "peer": [1e-6, 10e-6, 2e-6]}
    rows = _launch_rows(samples, "peer")
    assert np.isclose(rows["ours"]["median_us"], 3.0) and np.isclose(rows["ours"]["min_us"], 2.0)
    # per round: 2.0, 0.9, 1.5 -> median 1.5 (the ratio of the medians, 3/2, would hide the drift)
    assert np.isclose(rows["ours"]["per-round ratio to peer"], 1.5)
    assert "per-round ratio to peer" not in rows["peer"]
    assert "per-round ratio to absent" not in _launch_rows(samples, "absent")["ours"]
