"""Training a learned prior over a trained VQ-VAE's codes (the second stage of van den Oord et al., 2017).

:func:`fit_code_prior` encodes the training images to code grids with the trained VQ-VAE guide (eval mode: the
nearest codes, no codebook upkeep, a fixed binary draw of dynamically binarized images, as the test images are)
and fits a :class:`~ppl_vae.models.code_prior.PixelCNNPrior` to them by maximum likelihood.

It is trained by :func:`ppl_vae.fit`, the one training loop, as :class:`~ppl_vae.models.code_prior.CodePriorModel`:
a Pyro model with no latent variable whose observed site is the code grid, so the Trace_ELBO it minimises is the
exact NLL. With a run directory, that training is a run of its own in ``RUN/prior`` (``checkpoint.pt`` every
epoch, ``metrics.jsonl``), so an interrupted stage resumes (``resume=True``, or ``ppl-vae fit --resume RUN`` for
a config with a ``prior:`` section).

Saved in ``RUN/prior/`` once trained: ``prior.pt`` (the config, K, the code shape and the weights) and
``prior.json`` (the training curve, the validation bits per dimension, the settings and the number of VQ-VAE
epochs whose codes it was trained on: a prior of other codes is stale, see :func:`prior_is_current`).
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
from ..runs import RunDir, atomic_write_bytes
from .distributed import broadcast_object, current_world
from .evaluate import eval_mode
from .fit import fit
from .training import OptimConfig, TrainConfig

__all__ = ["PRIOR_DIR", "encode_codes", "fit_code_prior", "code_prior_bpd", "save_code_prior", "load_code_prior",
           "prior_is_current"]

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


def fit_prior_on_codes(prior: PixelCNNPrior, codes: torch.Tensor, config: CodePriorConfig, run=None,
                       resume: bool = False, source: dict | None = None) -> list[float]:
    """Fit ``prior`` to the code grids ``codes`` by minimising their exact NLL with :func:`ppl_vae.fit`; returns the
    mean training bits per dimension of each epoch. ``run``: a RunDir for the training's checkpoints."""
    empty = codes[:0].float()
    data = Dataset("codes", codes.float(), empty, empty)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                        device=str(codes.device), progress=False, val_every=0)
    run_config = {"code_prior": asdict(config), "source": source or {}, "train": asdict(train)}
    result = fit(CodePriorModel(prior), NoLatents(), data, estimator="trace", optim=OptimConfig(lr=config.lr), train=train,
                 run_dir=run, resume=resume, run_config=run_config if run is not None else None)
    prior.eval()
    return [row["train_loss"] / (prior.num_positions * math.log(2)) for row in _history(result, run)]


def _history(result, run) -> list[dict]:
    """Every epoch's record: the run's whole metrics file (a resumed training returns its new epochs only)."""
    if run is None or not run.metrics_path.is_file():
        return result.history
    return [json.loads(line) for line in run.metrics_path.read_text().splitlines() if line.strip()]


#: what the prior's folder holds; a fresh training clears it
_PRIOR_FILES = ("prior.pt", "prior.json", "checkpoint.pt", "metrics.jsonl", "config.yaml")


def _prior_training(run_dir, config: CodePriorConfig, source: dict, resume: bool):
    """The RunDir of the prior's training and whether to resume it: only a checkpoint of the same settings
    trained on the same VQ-VAE resumes; anything else in the folder is stale and is cleared."""
    if run_dir is None:
        return None, False
    folder, world = _prior_path(run_dir), current_world()
    run = RunDir(folder)
    if world.is_main:  # under torchrun every rank trains; rank 0 decides and clears, the others follow
        saved = run.read_config() if resume and run.has_checkpoint() and run.config_path.is_file() else {}
        resume = saved.get("code_prior") == asdict(config) and saved.get("source") == source
        if not resume:
            for name in _PRIOR_FILES:
                (folder / name).unlink(missing_ok=True)
    return run, bool(broadcast_object(resume, world))


def fit_code_prior(model, guide, data, config: CodePriorConfig | None = None, run_dir=None, resume: bool = False,
                   source: dict | None = None) -> tuple[PixelCNNPrior, dict]:
    """Train a PixelCNN prior on the codes of a trained VQ-VAE (see the module docstring).

    :param model: the trained :class:`~ppl_vae.models.vqvae.VQVAE` (K and the code shape).
    :param guide: its trained guide (the encoder).
    :param data: a :class:`~ppl_vae.data.Dataset` (trained on the training split, validated on ``x_val``) or a
        tensor of images.
    :param CodePriorConfig config: network and training settings.
    :param run_dir: the VQ-VAE's run directory (a path or RunDir): the prior is trained and saved in ``RUN_DIR/prior``.
    :param bool resume: continue an interrupted training of the same settings on the same codes.
    :param dict source: what identifies the VQ-VAE (``{"vqvae_epochs": n}``), kept with the prior.
    :returns: the trained prior (eval mode) and its metrics (``train_bpd`` per epoch, ``val_bpd``, ``uniform_bpd``).
    """
    config, source = config or CodePriorConfig(), source or {}
    torch.manual_seed(config.seed)
    x_train, x_val = _train_codes(data)
    device = model.codebook.device
    prior = PixelCNNPrior(model.config.num_codes, model.latent_shape, config).to(device)
    run, resume = _prior_training(run_dir, config, source, resume)
    curve = fit_prior_on_codes(prior, encode_codes(guide, x_train.to(device)), config, run, resume, source)
    metrics = {"train_bpd": curve, "uniform_bpd": math.log2(prior.num_codes), "num_train": int(x_train.shape[0]),
               "config": asdict(config), **source}
    if x_val is not None:
        metrics["val_bpd"] = code_prior_bpd(prior, encode_codes(guide, x_val.to(device)))
    if run_dir is not None and current_world().is_main:
        save_code_prior(prior, metrics, run_dir)
    return prior, metrics


def prior_is_current(run_dir, config: CodePriorConfig, source: dict) -> bool:
    """Whether ``RUN_DIR/prior`` holds a finished prior of these settings, trained on these codes."""
    path = _prior_path(run_dir) / "prior.json"
    if not (path.is_file() and (path.parent / "prior.pt").is_file()):
        return False
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return saved.get("config") == asdict(config) and all(saved.get(k) == v for k, v in source.items())


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
