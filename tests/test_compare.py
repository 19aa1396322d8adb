"""Side-by-side comparisons of estimators and guides, through the CLI and the Python API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ppl_vae import ConfigError
from ppl_vae.cli import main
from ppl_vae.config import apply_overrides, config_from_dict, read_yaml
from ppl_vae.compare import CompareConfig, compare_estimators, guide_variants

ROOT = Path(__file__).resolve().parent.parent
TINY = ["train.epochs=2", "train.batch_size=50", "train.progress=false", "data.num_train=200"]


def _config(name, extra=()):
    raw = apply_overrides(read_yaml(ROOT / "configs" / "specs" / f"{name}.yaml"), [*TINY, *extra])
    return config_from_dict(raw)


@pytest.mark.slow  # three trainings and 40 gradient draws each; the estimator-level ordering is in test_estimators
def test_estimator_comparison_orders_gradient_variance(tmp_path):
    # A categorical latent: REINFORCE without a baseline > with a baseline > exact enumeration.
    config = _config("categorical_vae", ["model.latents=[{name: c, family: categorical, dim: 10}, {name: z, dim: 4}]"])
    rows, paths = compare_estimators(
        config, ["tracegraph", "tracegraph:avg", "enum"], tmp_path,
        CompareConfig(num_eval_points=50, num_samples=20, grad_draws=40),
    )
    var = {r["variant"]: r["encoder_grad_var"] for r in rows}
    assert var["tracegraph"] > var["tracegraph:avg"] > var["enum"]
    with open(paths["csv"]) as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["tracegraph", "tracegraph:avg", "enum"]
    assert paths["png"].stat().st_size > 0 and "| variant |" in paths["md"].read_text()


@pytest.mark.slow
def test_interrupted_comparison_reuses_finished_variants(tmp_path, caplog):
    config = _config("vae", ["model.latents=[{name: z, dim: 3}]"])
    small = CompareConfig(num_eval_points=20, num_samples=5, grad_draws=3)
    first, _ = compare_estimators(config, ["trace"], tmp_path, small)
    with caplog.at_level("INFO", logger="ppl_vae"):
        rows, _ = compare_estimators(config, ["trace", "meanfield"], tmp_path, small)
    assert any("done earlier" in r.getMessage() for r in caplog.records)
    assert rows[0] == first[0]
    assert json.loads((tmp_path / "meanfield" / "variant.json").read_text())["row"]["variant"] == "meanfield"


def test_compare_guides_cli(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare-guides", str(ROOT / "configs" / "specs" / "vae.yaml"), "--heads", "normal,fullcov",
            "--out", str(out), "-k", "30", "--eval-points", "30", "--data-dir", str(tmp_path)]
    for item in [*TINY, "model.latents=[{name: z, dim: 3}]"]:
        args += ["--set", item]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "share_khat_gt_0.7" in text and "active_units" in text and "kl_per_dim" in text
    assert (out / "comparison.png").is_file() and (out / "fullcov" / "checkpoint.pt").is_file()


def test_bad_variants_are_refused_by_name():
    config = _config("vae")
    with pytest.raises(ConfigError, match="nonsense"):
        compare_estimators(config, ["nonsense"], "/nonexistent")
    with pytest.raises(ConfigError, match="madeup"):
        guide_variants(config, ["madeup:3"])


def test_guide_variants_of_a_registry_guide_and_of_a_python_guide():
    digits = config_from_dict(read_yaml(ROOT / "configs" / "vae_digits.yaml"))
    [(label, variant)] = guide_variants(digits, ["iaf:2"])
    assert variant.guide.name == "amortized" and variant.guide.config.head == "iaf:2"
    assert variant.guide.config.hidden_dims == digits.guide.config.hidden_dims  # the rest of the guide is kept
    [(label, variant)] = guide_variants(digits, ["tests.user_models:LinearGuide"])
    assert variant.guide.name == "python" and variant.guide.config.target == "tests.user_models:LinearGuide"


def test_active_units_ignore_monte_carlo_noise():
    # A guide that ignores x has no active unit (its posterior mean is the same for every point), and one whose
    # mean moves with x in every dimension has all of them active, with exact or sampled means alike.
    import torch

    from ppl_vae.compare import _posterior_mean_variance
    import pyro.distributions as dist

    n, k, d = 200, 20, 3
    still = dist.Normal(torch.zeros(n, d), torch.ones(n, d))
    draws = still.sample((k,))
    assert (_posterior_mean_variance(still, draws) == 0).all()

    class NoMean(dist.Normal):
        @property
        def mean(self):
            raise NotImplementedError

    assert (_posterior_mean_variance(NoMean(torch.zeros(n, d), torch.ones(n, d)), draws) < 0.01).all()
    moving = NoMean(torch.randn(n, d), torch.ones(n, d))
    assert (_posterior_mean_variance(moving, moving.sample((k,))) > 0.5).all()
