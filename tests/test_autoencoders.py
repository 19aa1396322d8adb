"""The classic deterministic autoencoders: denoising, sparse and contractive penalties, and their evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine

from ppl_vae.cli import main
from ppl_vae.config import config_from_dict, read_yaml
from ppl_vae.errors import FitInterrupted
from ppl_vae.experiment import fit_experiment, resume_experiment
from ppl_vae.guides import (
    AmortizedGuide,
    AmortizedGuideConfig,
    CorruptedGuide,
    latent_sites,
)
from ppl_vae.guides.corruption import CorruptionConfig, corrupt
from ppl_vae.guides.penalties import (
    ContractiveConfig,
    SparsityConfig,
    jacobian_frobenius_sq,
    sparsity_penalty,
)
from ppl_vae.inference.evaluate import EvalConfig, evaluate
from ppl_vae.nets import ACTIVATIONS, Trunk
from ppl_vae.runs import RunDir
from tests.helpers import tiny_vae
from tests.test_fit import StopAt, _params

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DAE_DIGITS = CONFIGS / "dae_digits.yaml"


def _guide(model, x, **config) -> AmortizedGuide:
    return AmortizedGuide(tuple(x.shape[1:]), latent_sites(model, x), AmortizedGuideConfig(hidden_dims=(16,), **config))


def _penalty(guide, x, name) -> torch.Tensor:
    trace = poutine.trace(guide).get_trace(x)
    return trace.nodes[name]["fn"].log_factor


# -- the contractive penalty -----------------------------------------------------------------------


@pytest.mark.parametrize("hidden_dims", [(), (7,), (6, 5)], ids=["linear", "one-layer", "two-layers"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_jacobian(activation, hidden_dims):
    torch.manual_seed(0)
    trunk = Trunk(9, hidden_dims, activation).double()
    out = torch.nn.Linear(trunk.out_dim, 4).double()
    x = torch.randn(5, 9, dtype=torch.float64)
    expected = torch.stack([
        torch.autograd.functional.jacobian(lambda v: out(trunk(v)), row).pow(2).sum() for row in x
    ])
    assert torch.allclose(jacobian_frobenius_sq(trunk, out, x), expected, rtol=1e-10, atol=1e-12)


def test_the_guide_adds_the_contractive_penalty_in_training_only():
    model = tiny_vae(x_shape=(64,), latent_dim=3)[0].double()
    x = torch.rand(6, 64, dtype=torch.float64)
    guide = _guide(model, x, head="delta", contractive=ContractiveConfig(weight=0.5)).double()

    def code(v):
        return guide.heads["z"].linear(guide.trunk(v))

    expected = 0.5 * torch.stack([torch.autograd.functional.jacobian(code, row).pow(2).sum() for row in x])
    assert torch.allclose(_penalty(guide, x, "contractive"), expected, rtol=1e-9)
    guide.eval()
    assert "contractive" not in poutine.trace(guide).get_trace(x).nodes


def test_contractive_needs_a_delta_head():
    with pytest.raises(ValueError, match="head: delta"):
        AmortizedGuideConfig(head="normal", contractive=ContractiveConfig())


# -- the sparsity penalty ---------------------------------------------------------------------------


def test_sparsity_penalty_kl_form_matches_its_formula():
    code = torch.randn(8, 5, dtype=torch.float64)
    rho, weight = 0.05, 0.3
    expected = 0.0
    for j in range(5):
        rho_hat = sum(1 / (1 + math.exp(-float(code[i, j]))) for i in range(8)) / 8
        expected += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
    value = sparsity_penalty(code, SparsityConfig(kind="kl", weight=weight, target=rho))
    assert value.shape == (8,)  # the batch's KL, given to every point of the batch
    assert torch.allclose(value, torch.full((8,), weight * expected, dtype=torch.float64), rtol=1e-12)


def test_sparsity_penalty_l1_form_matches_its_formula():
    code = torch.randn(3, 8, 5, dtype=torch.float64)  # (particles, batch, dim)
    value = sparsity_penalty(code, SparsityConfig(kind="l1", weight=0.2))
    expected = [[0.2 * sum(abs(float(c)) for c in code[p, i]) for i in range(8)] for p in range(3)]
    assert torch.allclose(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_the_guide_adds_the_sparsity_penalty_on_its_code():
    model, _ = tiny_vae(x_shape=(64,), latent_dim=3)
    x = torch.rand(6, 64)
    config = SparsityConfig(kind="kl", weight=0.1, target=0.1)
    guide = _guide(model, x, head="delta", sparsity=config)
    trace = poutine.trace(guide).get_trace(x)
    expected = sparsity_penalty(trace.nodes["z"]["value"], config)
    assert torch.allclose(trace.nodes["sparsity"]["fn"].log_factor, expected)


# -- corruption -------------------------------------------------------------------------------------


def test_masking_noise_has_its_rate():
    pyro.set_rng_seed(0)
    x = torch.ones(200_000)
    zeros = float((corrupt(x, CorruptionConfig("masking", 0.3)) == 0).float().mean())
    assert zeros == pytest.approx(0.3, abs=0.005)  # the standard error is 0.001


def test_salt_and_pepper_noise_has_its_rate():
    pyro.set_rng_seed(0)
    x = torch.full((200_000,), 0.5)
    noisy = corrupt(x, CorruptionConfig("salt_and_pepper", 0.2))
    assert float((noisy == 0).float().mean()) == pytest.approx(0.1, abs=0.005)
    assert float((noisy == 1).float().mean()) == pytest.approx(0.1, abs=0.005)


def test_gaussian_noise_has_its_scale_and_stays_in_range():
    pyro.set_rng_seed(0)
    noisy = corrupt(torch.full((200_000,), 0.5), CorruptionConfig("gaussian", 0.1))
    assert float((noisy - 0.5).std()) == pytest.approx(0.1, rel=0.02)
    assert float(corrupt(torch.ones(1000), CorruptionConfig("gaussian", 0.5)).max()) <= 1.0


def test_corruption_is_off_outside_training():
    model, _ = tiny_vae(x_shape=(64,), latent_dim=3)
    x = torch.rand(6, 64)
    for guide in (_guide(model, x, head="delta", corruption=CorruptionConfig("masking", 0.5)),
                  CorruptedGuide(_guide(model, x, head="delta"), CorruptionConfig("masking", 0.5))):
        clean = guide.guide if isinstance(guide, CorruptedGuide) else guide
        with torch.no_grad():
            expected = clean.heads["z"].linear(clean.trunk(x))
            guide.train()
            assert not torch.allclose(guide(x)["z"], expected)
            guide.eval()
            assert torch.equal(guide(x)["z"], expected)


@pytest.mark.parametrize("raw", [{"kind": "blur"}, {"kind": "masking", "rate": 1.5}, {"kind": "gaussian", "rate": -1}])
def test_bad_corruption_is_refused(raw):
    with pytest.raises(ValueError, match="guide.corruption"):
        CorruptionConfig(**raw)


# -- fit, resume and evaluate -----------------------------------------------------------------------


def _dae_config(epochs: int = 2, **guide):
    raw = read_yaml(DAE_DIGITS)
    raw["data"]["num_train"] = 100
    raw["train"].update(epochs=epochs, batch_size=25, progress=False, device="cpu", val_every=0)
    raw["guide"].update(hidden_dims=[16], **guide)
    raw["model"].update(hidden_dims=[16], latent_dim=3)
    return config_from_dict(raw)


def test_interrupted_and_resumed_denoising_fit_equals_uninterrupted_fit(tmp_path):
    config = _dae_config(epochs=2, sparsity={"kind": "kl", "weight": 0.1, "target": 0.1})
    full_run = RunDir.create(tmp_path, "full")
    full, _ = fit_experiment(config, full_run)
    run = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted):
        fit_experiment(config, run, callbacks=[StopAt(1, 2)])  # mid-epoch: the corruption's RNG state must resume
    assert run.load_checkpoint()["epoch"] == 1
    resumed, result = resume_experiment(run)
    assert result.epochs_done == 2
    for a, b in zip(_params(full.model, full.guide), _params(resumed.model, resumed.guide)):
        assert torch.equal(a, b)
    full_metrics, cut_metrics = full_run.read_metrics(), run.read_metrics()
    assert [m["train_loss"] for m in cut_metrics] == [m["train_loss"] for m in full_metrics]
    assert [m["term_sparsity"] for m in cut_metrics] == [m["term_sparsity"] for m in full_metrics]


def test_penalties_are_reported_in_the_metrics(tmp_path):
    config = _dae_config(epochs=1, sparsity={"kind": "l1", "weight": 0.01}, contractive={"weight": 0.01})
    run = RunDir.create(tmp_path, "run")
    fit_experiment(config, run)
    last = run.read_metrics()[-1]
    assert last["term_sparsity"] > 0 and last["term_contractive"] > 0


def test_evaluate_reports_reconstruction_error_for_a_point_mass_guide():
    model, _ = tiny_vae(x_shape=(64,), latent_dim=3)
    x = torch.bernoulli(torch.full((20, 64), 0.3))
    guide = _guide(model, x, head="delta", corruption=CorruptionConfig("masking", 0.3))
    result = evaluate(model, guide, x, config=EvalConfig(num_samples=50, batch_size=7))
    assert math.isnan(result.log_likelihood) and result.num_samples == 1
    with torch.no_grad():
        mean = model.x_dist(guide.heads["z"].linear(guide.trunk(x))).mean  # the clean input: no corruption
    rec = result.reconstruction
    assert rec.num_points == 20
    bce = torch.nn.functional.binary_cross_entropy(mean, x, reduction="none").sum(-1).mean()
    assert rec.bce == pytest.approx(float(bce), rel=1e-5)
    assert rec.mse == pytest.approx(float((mean - x).pow(2).mean()), rel=1e-5)
    assert evaluate(model, _guide(model, x), x, config=EvalConfig(num_samples=5)).reconstruction is None


def test_the_one_reconstruction_term_is_the_bernoulli_cross_entropy_and_serves_the_aae_and_the_vqvae():
    from ppl_vae.guides import make_guide
    from ppl_vae.inference.adversarial import _reconstruction
    from ppl_vae.inference.codebook import codebook_report
    from ppl_vae.inference.evaluate import eval_mode
    from ppl_vae.inference.reconstruction import reconstruction_terms
    from ppl_vae.models import VQVAEConfig, make_model

    torch.manual_seed(0)
    model, _ = tiny_vae(x_shape=(64,), latent_dim=3)
    x = torch.bernoulli(torch.full((20, 64), 0.3))
    guide = _guide(model, x, head="delta")
    with eval_mode(model, guide):
        nll, recon = reconstruction_terms(model, guide, x)
        mean = model.x_dist(guide.heads["z"].linear(guide.trunk(x))).mean
        assert _reconstruction(model, guide, x, None, batch_size=7) == pytest.approx(float(nll.mean()), rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy(mean, x, reduction="none").sum(-1)
    assert nll.shape == (20,) and torch.allclose(nll.float(), bce, rtol=1e-5) and torch.allclose(recon, mean)
    vq = make_model("vqvae", (1, 8, 8), VQVAEConfig(num_codes=6, code_dim=4, channels=(4, 8)))
    vq_guide = make_guide("vqvae", vq)
    images = torch.bernoulli(torch.full((10, 1, 8, 8), 0.4))
    report = codebook_report(vq, vq_guide, images)
    with eval_mode(vq, vq_guide):
        _, _, e = vq_guide.quantize(images)
        p = vq.x_dist(e).mean
    expected = torch.nn.functional.binary_cross_entropy(p, images, reduction="none").reshape(10, -1).sum(-1).mean()
    assert report.recon_nll == pytest.approx(float(expected), rel=1e-5)


def test_cli_show_fit_evaluate_sample_on_the_denoising_config(tmp_path, capsys):
    small = ["--set", "train.epochs=1", "--set", "train.progress=false", "--out-dir", str(tmp_path)]
    assert main(["show", str(DAE_DIGITS), "--graph", str(tmp_path / "graph")]) == 0
    assert main(["fit", str(DAE_DIGITS), *small, "--name", "dae"]) == 0
    run = tmp_path / "dae"
    assert (run / "denoising.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "reconstruction BCE" in out and "point mass" in out and "log p(x) (importance)" not in out
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["reconstruction"]["bce"] > 0 and math.isnan(saved["log_likelihood"])
    assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()


def test_compare_refuses_a_point_mass_guide(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare-guides", str(DAE_DIGITS), "--heads", "delta", "--set", "train.epochs=1", "--out", str(out),
                 "-k", "25"]) == 0
    row = (out / "comparison.csv").read_text()
    assert "point mass" in row and "test_log_px" not in row
