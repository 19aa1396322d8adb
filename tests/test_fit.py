"""The training loop: learning, parameter updates, checkpoints, exact resume, NaN and interrupts."""

from __future__ import annotations

import os
import signal

import pyro
import pytest
import torch

from ppl_vae import (
    ESTIMATORS,
    Callback,
    estimator_config,
    FitInterrupted,
    NonFiniteLossError,
    OptimConfig,
    RunDir,
    evaluate,
    fit,
    load_run,
)
from ppl_vae.config import config_from_dict, config_to_dict
from ppl_vae.experiment import build_experiment, fit_experiment, resume_experiment

from .helpers import quick_train, tiny_digits, tiny_vae


def _params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def test_loss_falls_on_small_dataset():
    data = tiny_digits(300)
    model, guide = tiny_vae()
    result = fit(model, guide, data, optim=OptimConfig(lr=3e-3), train=quick_train(epochs=12, batch_size=30))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 12
    # 44.4 nats per point is the loss of a uniform Bernoulli on 64 pixels; training must do far better.
    assert losses[-1] < losses[0] - 5
    assert losses[-1] < 35
    assert result.history[-1]["val_elbo"] > -35


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_one_step_changes_every_parameter_and_evaluation_changes_none(name):
    data = tiny_digits(20)
    model, guide = tiny_vae()
    before = _params(model, guide)
    fit(model, guide, data, estimator=estimator_config(name), train=quick_train(epochs=1, batch_size=20, val_every=0))
    after = _params(model, guide)
    assert all(not torch.equal(a, b) for a, b in zip(before, after)), "every parameter should move after a step"
    evaluate(model, guide, data.x_test[:30])
    assert all(torch.equal(a, b) for a, b in zip(after, _params(model, guide)))


def test_param_store_does_not_leak_between_runs():
    data = tiny_digits(20)
    model, guide = tiny_vae()
    fit(model, guide, data, train=quick_train(epochs=1))
    assert not list(pyro.get_param_store().keys())


def _digits_config(tmp_path, epochs=4, **train):
    raw = {
        "data": {"name": "digits", "num_train": 120},
        "model": {"name": "vae", "latent_dim": 3, "hidden_dims": [16]},
        "guide": {"name": "amortized", "hidden_dims": [16]},
        "train": {"epochs": epochs, "batch_size": 25, "progress": False, "device": "cpu", **train},
        "eval": {"num_samples": 10},
    }
    return config_from_dict(raw)


def test_save_then_load_gives_identical_outputs(tmp_path):
    config = _digits_config(tmp_path, epochs=2)
    run = RunDir.create(tmp_path, "run")
    exp, _ = fit_experiment(config, run)
    loaded = load_run(run.path, device="cpu")
    x = exp.data.x_test[:10]
    for a, b in [(exp.model, loaded.model), (exp.guide, loaded.guide)]:
        for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert na == nb and torch.equal(pa, pb)
    assert torch.equal(exp.guide.latent_dist("z", x).mean, loaded.guide.latent_dist("z", x).mean)
    z = torch.randn(4, 3)
    assert torch.equal(exp.model.x_dist(z).mean, loaded.model.x_dist(z).mean)


class StopAt(Callback):
    def __init__(self, epoch, step, via_signal=None):
        self.epoch, self.step, self.via_signal = epoch, step, via_signal

    def on_step(self, ctx, loss):
        if (ctx.epoch, ctx.step) == (self.epoch, self.step):
            if self.via_signal:
                os.kill(os.getpid(), self.via_signal)  # what Ctrl-C, or a scheduler's stop, sends
            else:
                ctx.request_stop()


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param((1, 2, None), id="mid-epoch"),
        pytest.param((2, 4, None), id="epoch-end", marks=pytest.mark.slow),
        pytest.param((0, 1, signal.SIGINT), id="sigint", marks=pytest.mark.slow),
        pytest.param((1, 1, signal.SIGTERM), id="sigterm"),
    ],
)
def test_interrupted_and_resumed_fit_equals_uninterrupted_fit(tmp_path, stop):
    config = _digits_config(tmp_path, epochs=4)
    full_run = RunDir.create(tmp_path, "full")
    full, _ = fit_experiment(config, full_run)

    run = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted) as info:
        fit_experiment(config, run, callbacks=[StopAt(*stop)])
    assert "resume with: ppl-vae fit --resume" in str(info.value)
    assert info.value.signal == stop[2]
    assert ("by SIGTERM" in str(info.value)) == (stop[2] == signal.SIGTERM)
    state = run.load_checkpoint()
    assert (state["epoch"], state["step"]) != (0, 0)

    resumed, result = resume_experiment(run)
    assert result.epochs_done == 4
    for a, b in zip(_params(full.model, full.guide), _params(resumed.model, resumed.guide)):
        assert torch.equal(a, b)
    full_metrics = [m["train_loss"] for m in full_run.read_metrics()]
    cut_metrics = [m["train_loss"] for m in run.read_metrics()]
    assert len(cut_metrics) == 4
    assert cut_metrics == pytest.approx(full_metrics, rel=1e-6)


def test_resume_extends_a_finished_run(tmp_path):
    config = _digits_config(tmp_path, epochs=2)
    run = RunDir.create(tmp_path, "run")
    fit_experiment(config, run)
    _, result = resume_experiment(run, ["train.epochs=3"])
    assert result.epochs_done == 3
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]


class PoisonAt(Callback):
    """Sets a decoder weight to NaN after the given step, so the next loss is NaN."""

    def __init__(self, epoch, step):
        self.epoch, self.step = epoch, step

    def on_step(self, ctx, loss):
        if (ctx.epoch, ctx.step) == (self.epoch, self.step):
            with torch.no_grad():
                ctx.model.decoder[0].weight[0, 0] = float("nan")


@pytest.mark.parametrize("validate_steps", [0, -1], ids=["pyro-validation-off", "pyro-validation-on"])
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, validate_steps):
    config = _digits_config(tmp_path, epochs=4, validate_steps=validate_steps)
    run = RunDir.create(tmp_path, "run")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3.*last good checkpoint"):
        fit_experiment(config, run, callbacks=[PoisonAt(1, 1)])
    state = run.load_checkpoint()
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(run.read_metrics()) == 1


def test_fit_accepts_a_plain_tensor_and_checks_its_shape():
    model, guide = tiny_vae((10,), latent_dim=2, hidden=8)
    x = torch.rand(30, 10).round()
    result = fit(model, guide, x, train=quick_train(epochs=2, batch_size=10))
    assert len(result.history) == 2 and "val_elbo" not in result.history[0]


def test_build_experiment_is_seeded(tmp_path):
    config = _digits_config(tmp_path)
    a, b = build_experiment(config), build_experiment(config)
    assert all(torch.equal(p, q) for p, q in zip(_params(a.model, a.guide), _params(b.model, b.guide)))
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.cuda
def test_fit_and_evaluate_on_cuda():
    data = tiny_digits(50)
    model, guide = tiny_vae()
    result = fit(model, guide, data, train=quick_train(epochs=2, device="cuda"))
    assert result.device.startswith("cuda")
    assert all(p.is_cuda for p in model.parameters())
    out = evaluate(model, guide, data.to("cuda").x_test[:20])
    assert out.log_likelihood >= out.elbo
