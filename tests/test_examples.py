"""Each example script learns its sequence task: its metric ends clearly above chance within seconds."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"tapegrad_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (script, steps, threshold, chance): a short run still ends far above chance.
CASES = [
    ("many_to_one", 80, 0.75, 0.25),             # which of 4 noisy patterns
    ("one_to_many", 50, 0.90, 0.20),              # generate a class's 8 symbols freely
    ("many_to_many_aligned", 100, 0.90, 0.50),    # running parity, a label per step
    ("many_to_many_delayed", 100, 0.90, 0.25),    # echo each symbol 3 steps later
]


@pytest.mark.parametrize("name, steps, threshold, chance", CASES, ids=[c[0] for c in CASES])
def test_example_learns_its_task_well_above_chance(name, steps, threshold, chance):
    metric = _load(name).train(steps=steps, seed=0)
    assert metric >= threshold, f"{name}: {metric:.3f} after {steps} steps (chance {chance})"


def test_examples_are_runnable_scripts_with_a_train_function():
    for name, *_ in CASES:
        text = (EXAMPLES / f"{name}.py").read_text()
        assert 'if __name__ == "__main__":' in text and "def train(" in text
