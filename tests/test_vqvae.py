"""VQ-VAE: the straight-through gradient, the codebook and commitment terms, the loss Trace_ELBO computes,
usage metrics, the EMA update and dead-code reset, exact resume, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from ppl_vae.cli import main
from ppl_vae.config import config_from_dict
from ppl_vae.errors import ConfigError, FitInterrupted
from ppl_vae.experiment import fit_experiment, resume_experiment
from ppl_vae.guides import make_guide
from ppl_vae.inference.codebook import code_counts, codebook_report, dead_codes, perplexity
from ppl_vae.models import VQVAEConfig, make_model
from ppl_vae.models.vqvae import UniformCodes, nearest_codes, straight_through
from ppl_vae.runs import RunDir

from .test_fit import StopAt

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class FixedEncoder(nn.Module):
    """An encoder whose output is a given leaf tensor, so tests can differentiate with respect to z_e."""

    def __init__(self, z_e: torch.Tensor) -> None:
        super().__init__()
        self.z_e = z_e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z_e


def _tiny(x_dim=6, **config):
    """A flat-data VQ-VAE with K = 3 codes of size D = 2 and 2 code vectors per data point."""
    config = VQVAEConfig(**{"num_codes": 3, "code_dim": 2, "num_latents": 2, "hidden_dims": (5,), **config})
    model = make_model("vqvae", (x_dim,), config)
    return model, make_guide("vqvae", model)


def _fix(model, guide, z_e: torch.Tensor, codebook: torch.Tensor):
    """Pin the encoder output and the codebook to hand-made values."""
    guide.encoder = FixedEncoder(z_e)
    with torch.no_grad():
        model.codebook.copy_(codebook)


CODEBOOK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
# two data points, two positions each: nearest codes (1, 0) and (2, 1)
Z_E = torch.tensor([[[0.9, 0.2], [0.1, -0.3]], [[0.2, 0.7], [0.6, 0.1]]])


def test_nearest_codes_and_the_prior():
    assert nearest_codes(Z_E, CODEBOOK).tolist() == [[1, 0], [2, 1]]
    prior = UniformCodes(CODEBOOK, (2,)).expand((4,))
    draws = prior.sample((5,))
    assert draws.shape == (5, 4, 2, 2)
    assert all(any(torch.equal(v, e) for e in CODEBOOK) for v in draws.reshape(-1, 2))
    assert torch.allclose(prior.log_prob(draws), torch.full((5, 4), -2 * math.log(3)))


def test_straight_through_passes_the_decoder_gradient_to_the_encoder_unchanged():
    decoder = nn.Sequential(nn.Linear(2, 7), nn.Tanh(), nn.Linear(7, 1))
    z_e = torch.randn(4, 2, requires_grad=True)
    e = CODEBOOK[nearest_codes(z_e, CODEBOOK)]
    z = straight_through(z_e, e)
    assert torch.equal(z, e)  # the forward pass sees the codebook vectors
    (grad_encoder,) = torch.autograd.grad(decoder(z).sum(), z_e)
    at_codes = e.clone().requires_grad_()
    (grad_decoder,) = torch.autograd.grad(decoder(at_codes).sum(), at_codes)
    assert torch.equal(grad_encoder, grad_decoder)


def test_the_guide_samples_the_nearest_codes_with_the_straight_through_gradient():
    model, guide = _tiny()
    z_e = Z_E.clone().requires_grad_()
    _fix(model, guide, z_e, CODEBOOK)
    z = poutine.trace(guide).get_trace(torch.zeros(2, 6)).nodes["z"]["value"]
    assert torch.equal(z, CODEBOOK[torch.tensor([[1, 0], [2, 1]])])
    weights = torch.randn(2, 2, 2)
    (grad,) = torch.autograd.grad((weights * z).sum(), z_e)
    assert torch.equal(grad, weights)


def test_codebook_and_commitment_terms_have_the_gradients_of_their_formulas():
    model, guide = _tiny(beta=0.25)
    z_e = Z_E.clone().requires_grad_()
    _fix(model, guide, z_e, CODEBOOK)
    trace = poutine.trace(guide).get_trace(torch.zeros(2, 6))
    codebook_term = trace.nodes["codebook"]["fn"].log_factor  # (2,), one per data point
    commitment_term = trace.nodes["commitment"]["fn"].log_factor
    e = CODEBOOK[torch.tensor([[1, 0], [2, 1]])]
    assert torch.allclose(codebook_term, (Z_E - e).pow(2).sum((-2, -1)))
    assert torch.allclose(commitment_term, 0.25 * (Z_E - e).pow(2).sum((-2, -1)))

    # codebook term: d/de_k = -2 sum of (z_e - e_k) over the positions assigned to k; none to the encoder
    g_codebook, g_encoder = torch.autograd.grad(codebook_term.sum(), [model.codebook, z_e], allow_unused=True)
    expected = torch.zeros(3, 2)
    for k, position in [(1, (0, 0)), (0, (0, 1)), (2, (1, 0)), (1, (1, 1))]:
        expected[k] += -2 * (Z_E[position] - CODEBOOK[k])
    assert torch.allclose(g_codebook, expected)
    assert g_encoder is None or torch.equal(g_encoder, torch.zeros_like(z_e))
    # commitment term: d/dz_e = 2 beta (z_e - e); none to the codebook
    g_codebook, g_encoder = torch.autograd.grad(commitment_term.sum(), [model.codebook, z_e], allow_unused=True)
    assert g_codebook is None or torch.equal(g_codebook, torch.zeros(3, 2))
    assert torch.allclose(g_encoder, 2 * 0.25 * (Z_E - e))


def test_trace_elbo_loss_is_reconstruction_plus_code_prior_plus_terms():
    model, guide = _tiny()
    _fix(model, guide, Z_E.clone(), CODEBOOK)
    x = torch.tensor([[1.0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]])
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    e = CODEBOOK[torch.tensor([[1, 0], [2, 1]])]
    reconstruction = -model.x_dist(e).log_prob(x).sum()
    terms = 1.25 * (Z_E - e).pow(2).sum()
    assert torch.allclose(loss, reconstruction + 2 * 2 * math.log(3) + terms)


def test_perplexity_and_dead_codes_on_a_hand_made_assignment():
    counts = torch.tensor([2, 2, 0, 4])
    # p = (1/4, 1/4, 0, 1/2): H = 1.5 log 2, perplexity 2^1.5
    assert perplexity(counts) == pytest.approx(2**1.5)
    assert perplexity(torch.tensor([5, 5, 5])) == pytest.approx(3.0)
    assert dead_codes(counts) == 1
    model, guide = _tiny()
    _fix(model, guide, Z_E.clone(), CODEBOOK)
    assert code_counts(guide, torch.zeros(2, 6)).tolist() == [1, 2, 1]
    report = codebook_report(model, guide, torch.ones(2, 6))
    assert report.dead_codes == 0 and report.perplexity == pytest.approx(perplexity(torch.tensor([1, 2, 1])))
    assert report.recon_nll > 0 and 0 < report.recon_mse < 1


def test_ema_update_follows_its_formula_and_only_in_training():
    model, guide = _tiny(ema_decay=0.9, ema_epsilon=1e-5)
    assert "codebook" in dict(model.named_buffers()) and "codebook" not in dict(model.named_parameters())
    _fix(model, guide, Z_E.clone(), CODEBOOK)
    model.ema_sum.copy_(CODEBOOK)
    x = torch.zeros(2, 6)
    with torch.no_grad():
        guide(x)  # no gradients: no update
    assert torch.equal(model.codebook, CODEBOOK)
    trace = poutine.trace(guide).get_trace(x)
    assert "codebook" not in trace.nodes  # the EMA replaces the codebook term
    counts = torch.tensor([1.0, 2.0, 1.0])
    sums = torch.stack([Z_E[0, 1], Z_E[0, 0] + Z_E[1, 1], Z_E[1, 0]])
    ema_count = 0.9 + 0.1 * counts
    ema_sum = 0.9 * CODEBOOK + 0.1 * sums
    n = ema_count.sum()
    expected = ema_sum / ((ema_count + 1e-5) / (n + 3e-5) * n).unsqueeze(-1)
    assert torch.allclose(model.codebook, expected)
    guide.eval()
    poutine.trace(guide).get_trace(x)
    assert torch.allclose(model.codebook, expected)  # eval mode: no update


def test_dead_codes_are_reset_to_encoder_outputs():
    model, guide = _tiny(reset_every=2)
    far = CODEBOOK.clone()
    far[2] = 100.0  # never the nearest code
    z_e = torch.tensor([[[0.9, 0.2], [0.1, -0.3]], [[0.8, 0.1], [0.6, 0.1]]])
    _fix(model, guide, z_e, far)
    x = torch.zeros(2, 6)
    guide(x)
    assert torch.equal(model.codebook[2], far[2])  # one step of the window of two
    guide(x)
    assert any(torch.equal(model.codebook[2], v) for v in z_e.reshape(-1, 2))
    assert torch.equal(model.codebook[:2], far[:2])
    assert int(model.steps_since_reset) == 0 and model.usage.sum() == 0


def _digits_config(tmp_path, epochs=3):
    raw = {
        "data": {"name": "digits", "num_train": 60, "flatten": False},
        "model": {"name": "vqvae", "num_codes": 8, "code_dim": 4, "channels": [8], "ema_decay": 0.9, "reset_every": 3},
        "guide": {"name": "vqvae"},
        "train": {"epochs": epochs, "batch_size": 20, "progress": False, "device": "cpu", "val_every": 0},
        "eval": {"num_samples": 1},
    }
    return config_from_dict(raw)


def _state(exp):
    return [(name, t.detach().clone()) for m in (exp.model, exp.guide) for name, t in m.state_dict().items()]


def test_interrupted_and_resumed_fit_equals_uninterrupted_fit_with_ema_and_resets(tmp_path):
    config = _digits_config(tmp_path)
    full_run = RunDir.create(tmp_path, "full")
    full, _ = fit_experiment(config, full_run)
    run = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted):
        fit_experiment(config, run, callbacks=[StopAt(1, 2)])
    resumed, result = resume_experiment(run)
    assert result.epochs_done == 3
    full_state, resumed_state = _state(full), _state(resumed)
    assert [n for n, _ in full_state] == [n for n, _ in resumed_state]
    assert {"codebook", "ema_count", "ema_sum", "usage", "steps_since_reset"} <= {n for n, _ in full_state}
    for (name, a), (_, b) in zip(full_state, resumed_state):
        assert torch.equal(a, b), name
    assert [m["train_loss"] for m in run.read_metrics()] == [m["train_loss"] for m in full_run.read_metrics()]
    assert "term_commitment" in full_run.read_metrics()[-1]


def test_cli_show_fit_evaluate_sample(tmp_path, capsys):
    config = str(CONFIGS / "vqvae_digits.yaml")  # with its prior: section, a second stage (kept short here)
    quick = ["--set", "train.epochs=1", "--set", "train.progress=false", "--set", "prior.epochs=1"]
    assert main(["show", config, *quick, "--graph", str(tmp_path / "graph.png")]) == 0
    assert "'vqvae'" in capsys.readouterr().out
    assert main(["fit", config, *quick, "--out-dir", str(tmp_path), "--name", "vq"]) == 0
    run = tmp_path / "vq"
    assert {"codebook_usage.png", "samples.png", "reconstructions.png", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert "term_codebook" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (run / "prior" / "prior.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "dead codes" in out and "log p(x) (importance)" not in out
    result = json.loads((run / "evaluation.json").read_text())
    assert {"recon_nll", "recon_mse", "perplexity", "dead_codes"} <= set(result)
    assert 1 <= result["perplexity"] <= 32 and 0 <= result["dead_codes"] < 32
    assert main(["sample", str(run), "-n", "16"]) == 0
    assert "codes drawn from the learned PixelCNN prior" in capsys.readouterr().out  # the config's prior: stage


def test_a_vqvae_model_needs_the_vqvae_guide():
    raw = {"data": {"name": "digits", "flatten": False}, "model": {"name": "vqvae", "channels": [8]}}
    with pytest.raises(ConfigError, match="vqvae model and the vqvae guide"):
        config_from_dict(raw)
    model = make_model("vae", (64,))
    with pytest.raises(ValueError, match="pairs with a vqvae model"):
        make_guide("vqvae", model)


def test_training_moves_the_codebook_and_evaluation_changes_nothing():
    import ppl_vae

    model, guide = _tiny(x_dim=64, ema_decay=0.9, reset_every=2)
    x = (torch.rand(40, 64) < 0.3).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ppl_vae.fit(model, guide, x, train=ppl_vae.TrainConfig(epochs=1, batch_size=20, progress=False, val_every=0))
    trained = [(k, v.clone()) for m in (model, guide) for k, v in m.state_dict().items()]
    assert not torch.equal(before["codebook"], model.codebook) and not torch.equal(before["ema_count"], model.ema_count)
    ppl_vae.evaluate(model, guide, x[:10])
    codebook_report(model, guide, x[:10])
    for (name, a), (_, b) in zip(trained, [(k, v) for m in (model, guide) for k, v in m.state_dict().items()]):
        assert torch.equal(a, b), name


def test_compiled_estimators_are_refused_when_the_guide_keeps_the_codebook_in_python():
    import ppl_vae

    model, guide = _tiny(x_dim=64, ema_decay=0.9)
    x = (torch.rand(40, 64) < 0.3).float()
    with pytest.raises(ConfigError, match="compiled estimator"):
        ppl_vae.fit(model, guide, x, estimator="jit_trace", train=ppl_vae.TrainConfig(epochs=1, batch_size=20, progress=False, val_every=0))
