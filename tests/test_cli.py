"""``python -m tapegrad``: dispatch, --help, argument errors (exit 2), missing files (exit 1, one line),
and tiny real runs whose JSON output is parsed."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tapegrad import __main__ as cli
from tapegrad.datasets import DATA_DIR

CORA = str(DATA_DIR / "cora.npz")


def _python_m(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "tapegrad", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _exit_code(argv):
    """Run the CLI in-process; argparse's SystemExit becomes a return code."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def small_text(tmp_path):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "cat"]
    lines = [" ".join(words[(7 * i + j) % len(words)] for j in range(8)) for i in range(60)]
    path = tmp_path / "small.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- the top level -----------------------------------------------------------------------------------------------

def test_python_m_tapegrad_help_lists_every_command():
    r = _python_m("--help", timeout=60)
    assert r.returncode == 0
    for name in cli.COMMANDS:
        assert name in r.stdout


def test_no_command_and_unknown_command_are_usage_errors(capsys):
    assert _exit_code([]) == 2
    assert "command" in capsys.readouterr().err
    assert _exit_code(["nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_command_whose_module_is_missing_exits_2_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "bench", ("tapegrad.apps._no_such_module", "absent"))
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "Traceback" not in err


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    code = _exit_code([command, "--help"])
    out = capsys.readouterr()
    assert code == 0, out.err  # every listed command ships with the package: a missing module is a failure
    assert "usage" in out.out.lower()


# ---- argument errors: argparse's exit code 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["charrnn", "--steps", "abc"],
    ["charrnn", "--steps", "0"],
    ["charrnn", "--lr", "-1"],
    ["charrnn", "--bogus"],
    ["gcn", "--seeds", "x"],
    ["gcn", "--seeds", "0"],
    ["gcn", "--bogus"],
    ["demo", "--lstm-steps", "0"],
    ["demo", "--bogus"],
])
def test_bad_arguments_exit_2_with_an_argparse_error(argv, capsys):
    assert _exit_code(argv) == 2
    assert "error" in capsys.readouterr().err


# ---- missing data: one line, exit 1 ---------------------------------------------------------------------------

def test_charrnn_missing_file_is_a_one_line_error_with_exit_1(tmp_path):
    r = _python_m("charrnn", "--data", str(tmp_path / "missing.txt"), "--steps", "1", timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.txt" in lines[0]


def test_gcn_missing_file_is_a_one_line_error_with_exit_1(tmp_path, capsys):
    code = _exit_code(["gcn", "--data", str(tmp_path / "missing.npz"), "--seeds", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "missing.npz" in lines[0]
    assert code == 1


def test_charrnn_text_too_short_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world\n")
    assert _exit_code(["charrnn", "--data", str(path), "--steps", "1"]) == 1
    assert "too short" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gcn", "charrnn", "demo"])
def test_device_cuda_without_a_gpu_is_a_one_line_error_with_exit_1(command, capsys):
    from tapegrad.engine.backend import cuda_available
    if cuda_available():
        pytest.skip("this machine has a usable GPU")
    assert _exit_code([command, "--device", "cuda"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "device='cuda' is unavailable" in lines[0]
    assert _exit_code([command, "--device", "tpu"]) == 2


# ---- tiny real runs ---------------------------------------------------------------------------------------------------

def test_charrnn_json_run_reports_finite_losses(small_text, capsys):
    argv = ["charrnn", "--data", str(small_text), "--steps", "3", "--batch", "4", "--seq-len", "16",
            "--hidden", "16", "--val-chunks", "2", "--json"]
    assert _exit_code(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("train_loss", "val_loss", "ms_per_step"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    # an untrained model over V characters sits near log V nats
    assert out["val_loss"] < 2 * math.log(out["vocab_size"])


def test_charrnn_text_run_and_sample(small_text, capsys):
    argv = ["charrnn", "--data", str(small_text), "--steps", "2", "--batch", "4", "--seq-len", "16",
            "--hidden", "16", "--val-chunks", "1", "--sample", "40"]
    assert _exit_code(argv) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "--- sample ---" in out
    sampled = out.split("--- sample ---\n", 1)[1]
    assert set(sampled.strip()) <= set(small_text.read_text())


def test_gcn_json_run_on_the_shipped_cora_file(capsys):
    assert Path(CORA).is_file()
    assert _exit_code(["gcn", "--data", CORA, "--seeds", "1", "--epochs", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 / 7 < out["test_acc_mean"] <= 1.0  # above chance (7 classes) already
    assert out["test_acc_std"] == 0.0
    assert out["epoch_ms_median"] > 0


# ---- usage lines, bad values, empty selections ----------------------------------------------------------------------

@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_usage_line_names_python_m_tapegrad(command, capsys):
    code = _exit_code([command, "--help"])
    out = capsys.readouterr().out
    if code == 2:
        pytest.skip(f"{cli.COMMANDS[command][0]} is not in this build")
    assert out.startswith(f"usage: python -m tapegrad {command} ")


@pytest.mark.parametrize("argv, option", [
    (["gcn", "--epochs", "0"], "--epochs"),
    (["gcn", "--hidden", "0"], "--hidden"),
    (["gcn", "--dropout", "1.5"], "--dropout"),
    (["gcn", "--patience", "0"], "--patience"),
    (["gcn", "--lr", "0"], "--lr"),
    (["gcn", "--lr", "nan"], "--lr"),
    (["gcn", "--weight-decay", "-1"], "--weight-decay"),
])
def test_gcn_bad_values_exit_2_naming_the_option(argv, option, capsys):
    assert _exit_code(argv + ["--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "Traceback" not in err


def test_bench_filter_matching_nothing_exits_2_on_stderr(capsys):
    assert _exit_code(["bench", "--filter", "nosuchcase"]) == 2
    out = capsys.readouterr()
    assert "no case matches --filter 'nosuchcase'" in out.err and out.out == ""


def test_gpubench_without_a_usable_gpu_is_one_line_exit_1(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError, as on a machine without it
    assert _exit_code(["gpubench", "--quick"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no usable CUDA device" in lines[0] and "Traceback" not in err


def test_gpubench_without_a_gpu_in_a_fresh_process_has_no_traceback():
    r = _python_m("gpubench", "--quick", "--only", "launch", timeout=180)
    if r.returncode == 0:
        pytest.skip("this machine has a usable GPU")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no usable CUDA device" in lines[0], r.stderr


# ---- profile: its own options before the target ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, own, target", [
    (["gcn", "--seeds", "1"], [], ["gcn", "--seeds", "1"]),
    (["--", "gcn", "--json"], [], ["gcn", "--json"]),
    (["--json", "x.json", "gcn", "--json"], ["--json", "x.json"], ["gcn", "--json"]),
    (["--json=x.json", "--limit", "5", "--", "s.py", "--", "a"], ["--json=x.json", "--limit", "5"],
     ["s.py", "--", "a"]),
    (["--help"], ["--help"], []),
])
def test_profile_splits_its_options_from_the_target(argv, own, target):
    from tapegrad.apps import profile
    assert profile._split(argv) == (own, target)


def test_profile_help_shows_the_profile_options(capsys):
    assert _exit_code(["profile", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m tapegrad profile") and "--roofline" in out and "--limit" in out
    assert "total ms" not in out


@pytest.mark.parametrize("sep", [[], ["--"]])
def test_profile_options_before_the_target_with_or_without_separator(sep, tmp_path, monkeypatch, capsys):
    from tapegrad.engine import profiler
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(profiler, "_PROBE_BYTES", 1 << 20)
    monkeypatch.setattr(profiler, "_PROBE_GEMM", 64)
    out_json = tmp_path / "p.json"
    argv = ["profile", "--json", str(out_json), "--limit", "3", *sep, "gcn", "--data", CORA, "--seeds", "1",
            "--epochs", "2", "--json"]
    assert _exit_code(argv) == 0
    out = capsys.readouterr().out
    assert "test_acc_mean" in out  # the target's own --json
    assert "total ms" in out and "more rows" in out  # --limit 3
    with open(out_json) as f:
        doc = json.load(f)
    assert any(r["name"] == "spmm" and r["kind"] == "kernel" for r in doc["rows"])


@pytest.mark.parametrize("target, code, message", [
    (["nosuch"], 2, "unknown target 'nosuch'"),
    (["--", "nosuch"], 2, "unknown target 'nosuch'"),
    (["--", "missing_script.py"], 1, "no such script"),
    (["bench"], 2, "cannot profile the 'bench'"),
    (["gcn", "--bogus"], 2, "no kernel or op ran"),
])
def test_profile_prints_no_table_when_the_target_did_not_run(target, code, message, capsys):
    assert _exit_code(["profile", *target]) == code
    out = capsys.readouterr()
    assert message in out.err
    assert "total ms" not in out.out and "peak cpu" not in out.out


def test_demo_gcn_is_the_gcn_commands_training_for_the_same_seed(monkeypatch):
    """`python -m tapegrad demo` reports what `python -m tapegrad gcn` does for its seed (audit 2, finding 6):
    the paper's setup (no bias, L2 term in the early-stopping loss), one implementation."""
    from tapegrad.apps import demo, gcn
    from tapegrad.datasets import load_planetoid, row_normalize
    data = load_planetoid("cora")
    want = gcn.train_one(data, row_normalize(data.x), seed=0)
    calls = []
    real = gcn.train_one
    monkeypatch.setattr(gcn, "train_one", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    got = demo.train_gcn(seed=0, progress=False)
    assert len(calls) == 1
    assert (got["test_acc"], got["val_acc"], got["epochs"]) == (want["test_acc"], want["val_acc"], want["epochs"])
