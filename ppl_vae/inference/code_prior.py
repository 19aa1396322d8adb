"""Training a learned prior over a trained VQ-VAE's codes (the second stage of van den Oord et al., 2017).

:func:`fit_code_prior` encodes the training images to code grids with the trained VQ-VAE guide (eval mode: the
nearest codes, no codebook upkeep, a fixed binary draw of dynamically binarized images, as the test images are)
and fits a :class:`~ppl_vae.models.code_prior.PixelCNNPrior` to them by maximum likelihood.

It is trained by :func:`ppl_vae.fit`, the one training loop, as :class:`~ppl_vae.models.code_prior.CodePriorModel`:
a Pyro model with no latent variable whose observed site is the code grid, so the Trace_ELBO it minimises is the
exact NLL. No checkpoint per epoch is kept (the stage is short: seconds on the digits); ``ppl-vae fit-prior``
retrains it when rerun.

Saved in ``RUN/prior/``: ``prior.pt`` (the config, K, the code shape and the weights) and ``prior.json`` (the
training curve and the validation bits per dimension).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..models.code_prior import CodePriorConfig, CodePriorModel, NoLatents, PixelCNNPrior
from ..data import Dataset
from ..runs import atomic_write_bytes
from .evaluate import eval_mode
from .fit import fit
from .training import OptimConfig, TrainConfig

__all__ = ["PRIOR_DIR", "encode_codes", "fit_code_prior", "code_prior_bpd", "save_code_prior", "load_code_prior"]

#: the folder of the learned prior inside a VQ-VAE run directory
PRIOR_DIR = "prior"


@torch.no_grad()
def encode_codes(guide, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The nearest code indices of the data points ``x``, ``(N, *latent_shape)`` (guide in eval mode)."""
    out = []
    with eval_mode(guide):
        for start in range(0, x.shape[0], batch_size):
            out.append(guide.quantize(x[start : start + batch_size])[1])
    return torch.cat(out)


@torch.no_grad()
def code_prior_bpd(prior: PixelCNNPrior, codes: torch.Tensor, batch_size: int = 500) -> float:
    """Mean bits per dimension of the code grids ``codes`` under ``prior`` (eval mode)."""
    total = 0.0
    with eval_mode(prior):
        for start in range(0, codes.shape[0], batch_size):
            total += float(prior.bits_per_dim(codes[start : start + batch_size]).double().sum())
    return total / codes.shape[0]


def _train_codes(data) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training images (one fixed binary draw under dynamic binarization) and the validation images."""
    if isinstance(data, torch.Tensor):
        return data, None
    x_val = data.x_val if data.x_val is not None and data.x_val.shape[0] else None
    return data.fixed_train_x(), x_val


def fit_prior_on_codes(prior: PixelCNNPrior, codes: torch.Tensor, config: CodePriorConfig) -> list[float]:
    """Fit ``prior`` to the code grids ``codes`` by minimising their exact NLL with :func:`ppl_vae.fit`; returns the
    mean training bits per dimension of each epoch."""
    empty = codes[:0].float()
    data = Dataset("codes", codes.float(), empty, empty)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                        device=str(codes.device), progress=False, val_every=0)
    result = fit(CodePriorModel(prior), NoLatents(), data, estimator="trace", optim=OptimConfig(lr=config.lr), train=train)
    prior.eval()
    return [row["train_loss"] / (prior.num_positions * math.log(2)) for row in result.history]


def fit_code_prior(model, guide, data, config: CodePriorConfig | None = None, run_dir=None) -> tuple[PixelCNNPrior, dict]:
    """Train a PixelCNN prior on the codes of a trained VQ-VAE (see the module docstring).

    :param model: the trained :class:`~ppl_vae.models.vqvae.VQVAE` (K and the code shape).
    :param guide: its trained guide (the encoder).
    :param data: a :class:`~ppl_vae.data.Dataset` (trained on the training split, validated on ``x_val``) or a
        tensor of images.
    :param CodePriorConfig config: network and training settings.
    :param run_dir: the VQ-VAE's run directory (a path or RunDir): the prior is saved in ``RUN_DIR/prior``.
    :returns: the trained prior (eval mode) and its metrics (``train_bpd`` per epoch, ``val_bpd``, ``uniform_bpd``).
    """
    config = config or CodePriorConfig()
    torch.manual_seed(config.seed)
    x_train, x_val = _train_codes(data)
    device = model.codebook.device
    prior = PixelCNNPrior(model.config.num_codes, model.latent_shape, config).to(device)
    curve = fit_prior_on_codes(prior, encode_codes(guide, x_train.to(device)), config)
    metrics = {"train_bpd": curve, "uniform_bpd": math.log2(prior.num_codes), "num_train": int(x_train.shape[0])}
    if x_val is not None:
        metrics["val_bpd"] = code_prior_bpd(prior, encode_codes(guide, x_val.to(device)))
    if run_dir is not None:
        save_code_prior(prior, metrics, run_dir)
    return prior, metrics


def _prior_path(run_dir) -> Path:
    return Path(getattr(run_dir, "path", run_dir)) / PRIOR_DIR


def save_code_prior(prior: PixelCNNPrior, metrics: dict, run_dir) -> Path:
    """Write ``prior.pt`` and ``prior.json`` in ``RUN_DIR/prior``; returns the folder."""
    folder = _prior_path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"config": asdict(prior.config), "num_codes": prior.num_codes, "latent_shape": list(prior.latent_shape),
             "state_dict": {k: v.cpu() for k, v in prior.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(folder / "prior.pt", lambda f: f.write(buffer.getbuffer()))
    text = (json.dumps(metrics, indent=2) + "\n").encode()
    atomic_write_bytes(folder / "prior.json", lambda f: f.write(text))
    return folder


def load_code_prior(run_dir, device: torch.device | str = "cpu") -> PixelCNNPrior | None:
    """The prior saved in ``RUN_DIR/prior`` (eval mode, on ``device``), or None when there is none."""
    path = _prior_path(run_dir) / "prior.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    prior = PixelCNNPrior(state["num_codes"], tuple(state["latent_shape"]), CodePriorConfig(**state["config"]))
    prior.load_state_dict(state["state_dict"])
    return prior.to(device).eval()
