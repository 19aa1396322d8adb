"""ppl_vae: variational autoencoders written as Pyro probabilistic programs.

A generative model p(x|z)p(z) is a Pyro model: a ``PyroModule`` whose ``forward`` holds the
``pyro.sample`` statements, or a plain function that registers its networks with ``pyro.module``.
An amortized guide q(z|x) is a Pyro guide of either form with the same signature
(:mod:`ppl_vae.contract` says what the tools need from them). :func:`fit` trains any such pair by
SVI with a Pyro ELBO, and :func:`evaluate` reports the ELBO and the importance-sampled log p(x).

The names below are imported on first use (PEP 562), so that ``import ppl_vae`` and the ``ppl-vae``
command start without loading torch and Pyro before they are needed.
"""


from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: public name -> the module that defines it
_EXPORTS = {
    "compile_spec": "ppl_vae.compile",
    "ExperimentConfig": "ppl_vae.config",
    "load_config": "ppl_vae.config",
    "DATA_PLATE": "ppl_vae.contract",
    "DATA_SITE": "ppl_vae.contract",
    "PARTICLE_PLATE": "ppl_vae.contract",
    "ParticleLoopWarning": "ppl_vae.contract",
    "DataConfig": "ppl_vae.data",
    "Dataset": "ppl_vae.data",
    "load_dataset": "ppl_vae.data",
    "CheckpointError": "ppl_vae.errors",
    "ConfigError": "ppl_vae.errors",
    "DataError": "ppl_vae.errors",
    "FitInterrupted": "ppl_vae.errors",
    "NonFiniteLossError": "ppl_vae.errors",
    "PplVaeError": "ppl_vae.errors",
    "RunDirError": "ppl_vae.errors",
    "Experiment": "ppl_vae.experiment",
    "build_experiment": "ppl_vae.experiment",
    "fit_experiment": "ppl_vae.experiment",
    "load_run": "ppl_vae.experiment",
    "GUIDES": "ppl_vae.guides",
    "AmortizedGuide": "ppl_vae.guides",
    "AmortizedGuideConfig": "ppl_vae.guides",
    "make_guide": "ppl_vae.guides",
    "ESTIMATORS": "ppl_vae.inference",
    "Callback": "ppl_vae.inference",
    "add_penalty": "ppl_vae.inference",
    "EstimatorConfig": "ppl_vae.inference",
    "EvalConfig": "ppl_vae.inference",
    "EvalResult": "ppl_vae.inference",
    "FitResult": "ppl_vae.inference",
    "KLWeighting": "ppl_vae.inference",
    "OptimConfig": "ppl_vae.inference",
    "TrainConfig": "ppl_vae.inference",
    "estimator_config": "ppl_vae.inference",
    "evaluate": "ppl_vae.inference",
    "fit": "ppl_vae.inference",
    "importance_log_likelihood": "ppl_vae.inference",
    "kl_weighted": "ppl_vae.inference",
    "log_weights": "ppl_vae.inference",
    "make_estimator": "ppl_vae.inference",
    "LIKELIHOODS": "ppl_vae.likelihoods",
    "make_likelihood": "ppl_vae.likelihoods",
    "PixelCNNConfig": "ppl_vae.pixelcnn",
    "PixelCNNDistribution": "ppl_vae.autoregressive",
    "MODELS": "ppl_vae.models",
    "VAE": "ppl_vae.models",
    "VAEConfig": "ppl_vae.models",
    "VQVAE": "ppl_vae.models.vqvae",
    "VQVAEConfig": "ppl_vae.models.vqvae",
    "VQVAEGuide": "ppl_vae.models.vqvae",
    "codebook_report": "ppl_vae.inference.codebook",
    "Adversarial_ELBO": "ppl_vae.inference.adversarial",
    "AdversarialConfig": "ppl_vae.inference.adversarial",
    "latent_match": "ppl_vae.inference.adversarial",
    "mmd": "ppl_vae.inference.adversarial",
    "make_model": "ppl_vae.models",
    "FunctionProgram": "ppl_vae.programs",
    "as_module": "ppl_vae.programs",
    "load_target": "ppl_vae.programs",
    "RunDir": "ppl_vae.runs",
    "StackConfig": "ppl_vae.stacked",
    "StageConfig": "ppl_vae.stacked",
    "train_stages": "ppl_vae.stacked",
    "init_from_stages": "ppl_vae.stacked",
    "GuideFactorSpec": "ppl_vae.spec",
    "GuideSpec": "ppl_vae.spec",
    "LatentSpec": "ppl_vae.spec",
    "ModelSpec": "ppl_vae.spec",
    "NetSpec": "ppl_vae.spec",
    "ObservedSpec": "ppl_vae.spec",
}

__all__ = ["__version__", *_EXPORTS]



def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppl_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
