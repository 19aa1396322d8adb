"""The gated PixelCNN and the ``pixelcnn`` likelihood: causality, exact scoring, sampling, and the tools on top."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ppl_vae import (
    ESTIMATORS,
    AmortizedGuideConfig,
    EvalConfig,
    FitInterrupted,
    RunDir,
    VAEConfig,
    estimator_config,
    evaluate,
    fit,
    make_guide,
    make_model,
)
from ppl_vae.cli import main
from ppl_vae.config import config_from_dict
from ppl_vae.data import Dataset
from ppl_vae.experiment import build_experiment, fit_experiment, resume_experiment, training_estimator
from ppl_vae.likelihoods import make_likelihood
from ppl_vae.pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNNConfig
from ppl_vae.spec import NetSpec, ObservedSpec, SpecError

from .helpers import quick_train, tiny_digits
from .test_fit import StopAt

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = CONFIGS / "pixelvae_digits.yaml"


def _dependencies(fn, x: torch.Tensor) -> torch.Tensor:
    """``dep[i, j, a, b]``: whether output pixel (i, j) has a non-zero gradient w.r.t. input pixel (a, b)."""
    x = x.clone().requires_grad_(True)
    out = fn(x)  # (B, C_out, H, W)
    height, width = out.shape[-2:]
    dep = torch.zeros(height, width, *x.shape[-2:], dtype=torch.bool)
    for i, j in itertools.product(range(height), range(width)):
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x, retain_graph=True)
        dep[i, j] = grad.abs().sum((0, 1)) > 0  # summed over a batch of random inputs: no accidental zero
    return dep


# -- (1) the autoregressive property -----------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["vertical", "horizontal"])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_a_masked_convolution_reads_exactly_its_causal_window(stack, mask_type):
    k, height, width = 5, 6, 7
    conv = MaskedConv2d(2, 3, k, stack, mask_type)
    dep = _dependencies(conv, torch.randn(4, 2, height, width))
    half = k // 2
    for i, j in itertools.product(range(height), range(width)):
        expected = torch.zeros(height, width, dtype=torch.bool)
        if stack == "vertical":
            # rows above (and the current row for mask B), k//2 columns either side
            expected[max(0, i - half) : i + (mask_type == "B"), max(0, j - half) : j + half + 1] = True
        else:
            # the current row, k//2 pixels to the left (and the pixel itself for mask B)
            expected[i, max(0, j - half) : j + (mask_type == "B")] = True
        assert torch.equal(dep[i, j], expected), (i, j)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("condition", ["vector", "spatial"])
def test_each_output_depends_exactly_on_the_earlier_pixels_in_reach(num_layers, kernel_size, condition):
    """Output i never reads pixels at or after i (raster order), and it reads every earlier pixel in its reach:
    rows i - r .. i - 1 at columns j - r .. j + r, and the current row to the left (no blind spot)."""
    config = PixelCNNConfig(num_layers=num_layers, channels=16, kernel_size=kernel_size, condition=condition, cond_dim=3, cond_channels=2)
    net = GatedPixelCNN(1, config)
    height, width, n = 7, 8, 4
    h, s = torch.randn(n, 3), torch.randn(n, 2, height, width)
    dep = _dependencies(lambda x: net(x, h if condition == "vector" else None, s if condition == "spatial" else None), torch.randn(n, 1, height, width))
    reach = config.receptive_reach
    for i, j in itertools.product(range(height), range(width)):
        expected = torch.zeros(height, width, dtype=torch.bool)
        expected[max(0, i - reach) : i, max(0, j - reach) : j + reach + 1] = True
        expected[i, max(0, j - reach) : j] = True
        assert torch.equal(dep[i, j], expected), (i, j)
        assert not dep[i, j].flatten()[i * width + j :].any()  # nothing at or after i


# -- (2) and (3): exact scoring and ancestral sampling agree ----------------------------------------------


@pytest.mark.parametrize("output", ["bernoulli", "categorical256"])
@pytest.mark.parametrize("condition", ["vector", "spatial"])
def test_log_prob_of_a_sample_is_the_sum_of_its_sampling_steps(output, condition):
    # 7 x 9 pixels and a reach of 2: each sampling step runs the network on a window, not the whole image
    config = PixelCNNConfig(num_layers=2, channels=8, output=output, condition=condition, cond_dim=5, cond_channels=2)
    lik = make_likelihood("pixelcnn", (1, 7, 9), pixelcnn=config)
    d = lik(torch.randn(2, 3, lik.num_outputs))  # batch shape (2, 3), as particles x data
    drawn = d.ancestral_sample(torch.Size([2]))
    assert drawn.value.shape == (2, 2, 3, 1, 7, 9) and drawn.step_log_probs.shape == (2, 2, 3, 63)
    # tolerance: float32 sums of 63 terms
    torch.testing.assert_close(d.log_prob(drawn.value), drawn.step_log_probs.sum(-1), atol=1e-4, rtol=1e-5)
    assert d.sample().shape == (2, 3, 1, 7, 9) and d.mean.shape == (2, 3, 1, 7, 9)


@pytest.mark.parametrize("condition", ["vector", "spatial"])
def test_the_probabilities_of_all_512_binary_3x3_images_sum_to_one(condition):
    config = PixelCNNConfig(num_layers=2, channels=8, condition=condition, cond_dim=4, cond_channels=2)
    lik = make_likelihood("pixelcnn", (1, 3, 3), pixelcnn=config)
    cond = torch.randn(2, lik.num_outputs) * 3  # two conditioning signals, far from 0
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9))).reshape(512, 1, 1, 3, 3)  # (512, 1, *x_shape)
    total = lik(cond).log_prob(images).double().exp().sum(0)  # broadcast: (512, 2) -> (2,)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_probabilities_of_all_two_pixel_grey_images_sum_to_one():
    config = PixelCNNConfig(num_layers=2, channels=8, output="categorical256", cond_dim=4)
    lik = make_likelihood("pixelcnn", (2,), pixelcnn=config)
    images = torch.cartesian_prod(torch.arange(256), torch.arange(256))  # (65536, 2)
    total = lik(torch.randn(lik.num_outputs)).log_prob(images).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)  # float32 terms of ~1e-5 each


# -- configuration ---------------------------------------------------------------------------------------


def test_bad_options_and_shapes_are_refused_with_the_expected_value():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        PixelCNNConfig(kernel_size=4)
    with pytest.raises(ValueError, match="pixelcnn.output must be one of"):
        PixelCNNConfig(output="gauss")
    with pytest.raises(ValueError, match="one-channel images"):
        make_likelihood("pixelcnn", (3, 8, 8))
    with pytest.raises(ValueError, match="binary"):
        make_likelihood("pixelcnn", (1, 2, 2)).check_data(torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(SpecError, match="condition: spatial"):
        ObservedSpec(likelihood="pixelcnn", net=NetSpec(kind="conv"))


# -- the models and the tools on top -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_digits():
    return tiny_digits(40, flatten=False, binarize="static")


def _vae(x_shape):
    model = make_model("vae", x_shape, VAEConfig(latent_dim=3, hidden_dims=(16,), likelihood="pixelcnn"))
    return model, make_guide("amortized", model, AmortizedGuideConfig(hidden_dims=(16,)))


# the compiled variants of one estimator share its code path: all but jit_trace run in the slow step
SLOW_ESTIMATORS = {"jit_enum", "jit_meanfield", "jit_tracegraph"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ESTIMATORS else n for n in sorted(ESTIMATORS)])
def test_every_estimator_trains_the_vae_with_a_pixelcnn_likelihood(name, image_digits):
    model, guide = _vae(image_digits.x_shape)
    before = [p.detach().clone() for p in model.likelihood.parameters()]
    fit(model, guide, image_digits, estimator=estimator_config(name), train=quick_train(epochs=1, batch_size=20, val_every=0))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.likelihood.parameters())), "the PixelCNN must train"
    result = evaluate(model, guide, image_digits.x_test[:10], config=EvalConfig(num_samples=4))
    assert math.isfinite(result.log_likelihood) and -64 * math.log(2) - 20 < result.log_likelihood < 0


def test_a_conv_decoder_conditions_the_pixelcnn_with_a_map(image_digits):
    raw = yaml.safe_load(DIGITS.read_text())
    raw["model"]["observed"]["net"] = {"kind": "conv", "hidden_dims": [16], "channels": [8]}
    raw["model"]["observed"]["pixelcnn"].update(condition="spatial", cond_channels=3)
    config = config_from_dict(raw)
    model = make_model("spec", image_digits.x_shape, config.model.config)
    guide = make_guide("spec", model, config.guide.config)
    assert model.likelihood.num_outputs == 3 * 64
    fit(model, guide, image_digits, train=quick_train(epochs=1, batch_size=20, val_every=0))
    result = evaluate(model, guide, image_digits.x_test[:10], config=EvalConfig(num_samples=4))
    assert math.isfinite(result.log_likelihood)


def _tiny(config_path: Path, tmp_path: Path, **train) -> Path:
    raw = yaml.safe_load(config_path.read_text())
    raw["data"]["num_train"] = 100
    raw["train"].update({"epochs": 2, "progress": False, "device": "cpu", **train})
    path = tmp_path / config_path.name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fit_evaluate_and_sample_through_the_command_line(tmp_path, capsys):
    config = _tiny(DIGITS, tmp_path)
    assert main(["fit", str(config), "--out-dir", str(tmp_path), "--name", "run"]) == 0
    run = tmp_path / "run"
    assert main(["evaluate", str(run), "--num-samples", "10"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    # better than p = 1/2 for each of 64 pixels; importance sampling is at least the ELBO (up to MC noise)
    assert -64 * math.log(2) < result["log_likelihood"] < 0 and result["log_likelihood"] > result["elbo"] - 0.5
    out = tmp_path / "samples.png"
    assert main(["sample", str(run), "-n", "8", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "reconstructions.png").is_file()
    assert "log p(x)" in capsys.readouterr().out


def test_the_bmnist_config_parses_and_builds():
    config = config_from_dict(yaml.safe_load((CONFIGS / "pixelvae_bmnist.yaml").read_text()))
    assert config.model.config.observed.likelihood == "pixelcnn" and config.data.name == "binarized_mnist"
    # the shipped PixelVAE: a conv decoder's map of z conditions the PixelCNN, and free bits guard against collapse
    assert config.model.config.observed.pixelcnn.condition == "spatial" and config.kl_weighting.free_bits > 0
    images = torch.bernoulli(torch.full((4, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(0))
    exp = build_experiment(config, data=Dataset.from_tensor(images))
    loss = training_estimator(config).loss(exp.model, exp.guide, images, None)
    # per point, the bound of an untrained network is near 784 log 2 = 543 nats and finite
    assert math.isfinite(loss) and 100 < loss / 4 < 2000


def test_an_interrupted_and_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    raw = yaml.safe_load(_tiny(DIGITS, tmp_path, epochs=3, batch_size=25, val_every=0).read_text())
    raw["data"]["num_train"] = 60
    config = config_from_dict(raw)
    full_run = RunDir.create(tmp_path, "full")
    full, _ = fit_experiment(config, full_run)
    run = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted, match="resume with"):
        fit_experiment(config, run, callbacks=[StopAt(1, 1)])
    resumed, result = resume_experiment(run)
    assert result.epochs_done == 3
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [m["train_loss"] for m in run.read_metrics()] == pytest.approx([m["train_loss"] for m in full_run.read_metrics()], rel=1e-6)


def test_the_vae_model_passes_its_pixelcnn_options_to_the_likelihood():
    from ppl_vae import VAEConfig

    def size(config):
        model = make_model("vae", (1, 8, 8), VAEConfig(latent_dim=2, hidden_dims=(8,), likelihood="pixelcnn", pixelcnn=config))
        return sum(p.numel() for p in model.likelihood.parameters())

    assert size(PixelCNNConfig(num_layers=1, channels=8)) < size(PixelCNNConfig(num_layers=2, channels=8))
    assert size(None) == size(PixelCNNConfig())
