"""The CUDA path, run where a GPU exists (``python -m pytest -m cuda``, or ``bash benchmarks/cuda_check.sh``).

Every test here is marked ``cuda`` and skipped without a GPU (``conftest.py``): every estimator of the
registry trains and evaluates on the device, function models too, an interrupted CUDA run resumes, and the
importance-sampled log p(x) of probabilistic PCA matches its closed form when computed on the GPU.
"""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch

from ppl_vae import DataConfig, EvalConfig, TrainConfig, evaluate, fit, load_dataset, log_weights
from ppl_vae.config import config_from_dict
from ppl_vae.experiment import build_experiment, training_estimator
from ppl_vae.inference.estimators import ESTIMATORS

from .ddp_worker import CATEGORICAL
from .helpers import ppca_vae, tiny_vae
from .test_evaluate import _ppca_problem
from .user_models import tutorial_guide, tutorial_model

pytestmark = pytest.mark.cuda

GAUSSIAN = {
    "data": {"name": "digits", "num_train": 64, "binarize": "dynamic", "seed": 0},
    "model": {"name": "vae", "latent_dim": 4, "hidden_dims": [32]},
    "guide": {"name": "amortized", "hidden_dims": [32]},
    "optim": {"lr": 0.01},
    "train": {"epochs": 2, "batch_size": 16, "progress": False, "device": "cuda", "val_every": 1},
}
#: options an estimator needs beyond its defaults
OPTIONS = {"iwae": {"num_particles": 3}, "renyi": {"alpha": 0.5, "num_particles": 3}}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_trains_and_evaluates_on_cuda(name):
    raw = copy.deepcopy(CATEGORICAL if ESTIMATORS[name].enumerates else GAUSSIAN)
    raw["estimator"] = {"name": name, **OPTIONS.get(name, {})}
    raw["train"].update(device="cuda", epochs=2)
    config = config_from_dict(raw)
    exp = build_experiment(config)
    result = fit(exp.model, exp.guide, exp.data, estimator=training_estimator(config), optim=config.optim, train=config.train)
    assert result.device.startswith("cuda")
    assert all(p.is_cuda for p in (*exp.model.parameters(), *exp.guide.parameters()))
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    out = evaluate(exp.model, exp.guide, exp.data.x_test[:32].cuda(), config=EvalConfig(num_samples=10, batch_size=16))
    assert math.isfinite(out.elbo) and math.isfinite(out.log_likelihood)


def test_function_model_and_guide_train_on_cuda():
    data = load_dataset(DataConfig(name="digits", num_train=64, binarize="dynamic"))
    result = fit(tutorial_model, tutorial_guide, data, train=TrainConfig(epochs=2, batch_size=16, device="cuda", progress=False))
    assert result.device.startswith("cuda")
    assert all(v.is_cuda for v in pyro.get_param_store().values())
    assert all(math.isfinite(row["train_loss"]) for row in result.history)


def _fit_vae(run_dir, epochs, resume=False):
    torch.manual_seed(0)
    model, guide = tiny_vae()
    data = load_dataset(DataConfig(name="digits", num_train=60, binarize="dynamic"))
    train = TrainConfig(epochs=epochs, batch_size=16, progress=False, device="cuda", val_every=1)
    with pyro.get_param_store().scope():
        result = fit(model, guide, data, train=train, run_dir=run_dir, resume=resume)
    return {k: v.detach().cpu() for m in (result.model, result.guide) for k, v in m.state_dict().items()}, result.history


def test_an_interrupted_cuda_run_resumes_to_the_uninterrupted_result(tmp_path):
    """cuBLAS may sum in another order from one call to the next, so the comparison allows float32 rounding
    (torch.testing's float32 tolerances), not bit equality as on the CPU."""
    straight, straight_rows = _fit_vae(tmp_path / "straight", 4)
    _fit_vae(tmp_path / "resumed", 2)
    resumed, resumed_rows = _fit_vae(tmp_path / "resumed", 4, resume=True)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key)
    assert [round(r["train_loss"], 4) for r in straight_rows[2:]] == [round(r["train_loss"], 4) for r in resumed_rows]


def test_ppca_log_likelihood_on_cuda_matches_the_closed_form():
    """As ``test_evaluate.test_importance_sampling_matches_ppca_log_likelihood``, with K = 4000 on the GPU:
    the mean error within 4 Monte-Carlo standard errors plus 0.01 nats."""
    W, b, x = _ppca_problem(orthogonal=False)
    model, guide, exact = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=1.3)
    model, guide, xc = model.cuda(), guide.cuda(), x.cuda()
    with torch.no_grad():
        lw = torch.cat([log_weights(model, guide, xc, num_samples=1000) for _ in range(4)]).cpu().double()
    assert lw.shape == (4000, len(x))
    ll = lw.logsumexp(0) - math.log(4000)
    w = (lw - lw.max(0).values).exp()
    se = w.std(0) / (w.mean(0) * math.sqrt(4000))
    err = ll - exact(x).double()
    assert abs(err.mean().item()) < 4 * (se.pow(2).sum().sqrt() / len(x)).item() + 0.01
