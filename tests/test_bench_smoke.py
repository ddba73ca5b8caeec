"""The benchmark command (apps/bench.py): a --quick run prints a table with ratio columns and writes JSON;
the timer interleaves implementations; skipped peers and cases print a line saying why.

No speed is asserted anywhere: benchmarks are not tests.
"""
import io
import json
import math
import re
import subprocess
import sys

from tapegrad.apps import bench

RATIO = re.compile(r"\s\d+\.\d\dx\s")


def test_bench_quick_prints_a_table_with_ratio_columns_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    # --time-limit caps the run (later cases print "skipped: --time-limit reached"); generous, because on a
    # fresh clone the first cases also pay for compiling every kernel into an empty Numba cache.
    p = subprocess.run([sys.executable, "-m", "tapegrad.apps.bench", "--quick", "--time-limit", "60",
                        "--json", str(out)], capture_output=True, text=True, timeout=240)
    log = p.stdout[-4000:] + p.stderr[-4000:]
    assert p.returncode == 0, log
    assert "peer/ours" in p.stdout and "median" in p.stdout, log
    ratio_lines = [line for line in p.stdout.splitlines() if RATIO.search(line + " ")]
    assert any("scipy" in line for line in ratio_lines), log  # scipy is a dependency: always a peer
    result = json.loads(out.read_text())
    assert result["info"]["quick"] is True
    cases = {c["case"]: c for c in result["cases"]}
    # pubmed is skipped where ../shared/data is absent; the R-MAT case always runs
    pubmed = cases.get("spmm/fwd/pubmed/F16", {})
    fwd = pubmed if pubmed.get("rows") else cases["spmm/fwd/rmat12/F16"]
    ours = [r for r in fwd["rows"] if r["ours"]]
    peers = [r for r in fwd["rows"] if not r["ours"] and "median_s" in r]
    assert len(ours) == 1 and ours[0]["median_s"] > 0
    assert peers and all(math.isclose(r["ratio_peer_over_ours"], r["median_s"] / ours[0]["median_s"])
                         for r in peers)


def _settings(reps):
    return bench.Settings.make(quick=True, data_dir=None, filt=None, reps=reps)


def test_interleaved_alternates_ours_and_peer_each_repetition():
    calls = []

    def body(name):
        def run(number):
            calls.append(name)
            return {"": 1e-3}
        return run
    t = bench.interleaved({"ours": body("ours"), "peer": body("peer")}, _settings(4), warmup=1)
    # a warm-up and an estimating call of each, then four measured rounds, alternating
    assert sorted(calls[:4]) == ["ours", "ours", "peer", "peer"]
    assert calls[4:] == ["ours", "peer"] * 4
    assert t["ours"].reps == 4 and t["ours"].median[""] == 1e-3


def test_printed_rows_give_peer_over_ours_and_a_line_for_a_skipped_peer():
    case = bench.Case("spmm/fwd/demo/F16")
    case.rows += [bench.Row("tapegrad", 2e-3, ours=True, reps=5), bench.Row("scipy", 5e-3, reps=5),
                  bench.Row("torch", skipped="torch is not installed")]
    buf = io.StringIO()
    bench.print_case(case, buf)
    lines = buf.getvalue().splitlines()
    assert "2.50x" in lines[1]
    assert "torch" in lines[2] and "skipped: torch is not installed" in lines[2]
    assert case.to_json()["rows"][1]["ratio_peer_over_ours"] == 2.5


def test_a_case_whose_piece_is_missing_prints_skipped_and_a_broken_one_prints_error():
    b = bench.Bench(_settings(1))
    buf = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, buf
    try:
        b.run_case("x/missing", lambda case: bench._import_piece("tapegrad.no_such_module", "no_such_module"))
        b.run_case("x/broken", lambda case: 1 / 0)
    finally:
        sys.stdout = sys_stdout
    text = buf.getvalue()
    assert "x/missing" in text and "skipped: no_such_module is not available" in text
    assert "x/broken" in text and "error: ZeroDivisionError" in text
    assert [c.skipped is not None for c in b.cases] == [True, False]


def test_list_names_every_case_and_filter_selects_by_substring(capsys):
    assert bench.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    for expected in ("spmm/fwd/pubmed/F64", "spmm/bwd/rmat20/F256", "gcn_norm/pubmed", "gcn/epoch/cora",
                     "lstm/train/T50_B64_I128_H256", "rnn/infer/T100_B32_I64_H128", "tape/fwd_per_op",
                     "import", "first_call/gcn_epoch/cora", "bandwidth/spmm/rmat20/F64"):
        assert expected in names
    b = bench.Bench(bench.Settings.make(quick=True, data_dir=None, filt="rmat20", reps=None))
    assert b.selected("spmm/fwd/rmat20/F64") and not b.selected("spmm/fwd/pubmed/F64")


def test_interleaved_idles_gap_before_each_sample_outside_the_timed_part():
    import time

    def body(number):
        t0 = time.perf_counter()
        time.sleep(0.001 * number)
        return {"": time.perf_counter() - t0}
    t0 = time.perf_counter()
    t = bench.interleaved({"ours": body, "peer": body}, _settings(3), warmup=1, gap_s=0.03)
    assert time.perf_counter() - t0 >= 6 * 0.03  # 3 rounds x 2 samples, each after a gap
    assert all(0.001 <= t[k].median[""] < 0.02 for k in t)
