"""Penalty terms added from a guide (:mod:`ppl_vae.inference.terms`): their place in the loss, their gradient,
their report in ``metrics.jsonl``, and an exact resume with them."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.nn import PyroModule
from torch import nn

from ppl_vae import FitInterrupted, RunDir, TrainConfig, add_penalty, fit

from .helpers import tiny_digits
from .test_fit import StopAt


class Decoder(PyroModule):
    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.dim, self.net = dim, nn.Linear(dim, 64)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


class L1Encoder(PyroModule):
    """A deterministic encoder (Delta guide) with an L1 penalty of weight ``weight`` on its code."""

    def __init__(self, weight: float, dim: int = 3) -> None:
        super().__init__()
        self.weight, self.net = weight, nn.Linear(64, dim)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            code = self.net(x)
            add_penalty("l1", self.weight * code.abs().sum(-1))
            pyro.sample("z", dist.Delta(code).to_event(1))


def _pair(weight: float):
    torch.manual_seed(0)
    return Decoder(), L1Encoder(weight)


@pytest.mark.parametrize("estimator", [Trace_ELBO(), TraceGraph_ELBO()], ids=["trace", "tracegraph"])
def test_a_penalty_adds_its_mean_per_point_to_the_loss_and_its_gradient(estimator):
    x = tiny_digits(20).x_train[:16].round()
    losses, grads = {}, {}
    for weight in (0.0, 0.7):
        model, guide = _pair(weight)
        with poutine.scale(scale=1.0 / x.shape[0]):
            losses[weight] = estimator.loss_and_grads(model, guide, x)
        grads[weight] = guide.net.weight.grad.clone()
    model, guide = _pair(0.7)
    penalty = 0.7 * guide.net(x).abs().sum(-1).mean()
    assert losses[0.7] == pytest.approx(losses[0.0] + penalty.item(), rel=1e-6)
    (expected,) = torch.autograd.grad(penalty, guide.net.weight)
    torch.testing.assert_close(grads[0.7] - grads[0.0], expected, rtol=1e-5, atol=1e-6)


def test_a_penalty_must_be_a_floating_point_tensor():
    with pytest.raises(ValueError, match="penalty 'l1' must be a floating-point tensor"):
        add_penalty("l1", 3)


def test_fit_reports_each_term_per_data_point_and_resumes_with_it(tmp_path):
    data = tiny_digits(60, binarize="dynamic")
    train = TrainConfig(epochs=3, batch_size=16, progress=False, device="cpu", val_every=0)
    model, guide = _pair(0.5)
    full = RunDir.create(tmp_path, "full")
    fit(model, guide, data, train=train, run_dir=full)
    rows = full.read_metrics()
    assert all(row["term_l1"] > 0 for row in rows) and rows[0]["term_l1"] != rows[-1]["term_l1"]

    model, guide = _pair(0.5)
    cut = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted):
        fit(model, guide, data, train=train, run_dir=cut, callbacks=[StopAt(1, 1)])
    model, guide = _pair(0.5)
    fit(model, guide, data, train=train, run_dir=cut, resume=True)
    assert [r["term_l1"] for r in cut.read_metrics()] == pytest.approx([r["term_l1"] for r in rows], rel=1e-12)
