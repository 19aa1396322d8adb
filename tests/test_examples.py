"""Every example runs with tiny settings; a new example must be added here."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# example file -> tiny command-line arguments
TINY_ARGS = {
    "vae_digits.py": ["--epochs", "2", "--num-train", "100", "--num-samples", "20", "--device", "cpu"],
    "custom_model.py": ["--epochs", "2", "--num-train", "100", "--num-samples", "20"],
    "semi_supervised.py": ["--epochs", "1", "--hidden", "32", "--z-dim", "4", "--num-samples", "10"],
    "posterior_inspection.py": [
        "--epochs", "2", "--num-train", "100", "--hidden", "32", "--num-samples", "40",
        "--num-eval", "20", "--eval-samples", "20", "--device", "cpu",
    ],
}


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], EXAMPLES_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.py")) == sorted(TINY_ARGS)


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _load(name)
    assert module.__doc__, f"{name} needs a docstring"
    out = module.main(TINY_ARGS[name])
    assert math.isfinite(out["log_likelihood"]) and out["log_likelihood"] >= out["elbo"]
