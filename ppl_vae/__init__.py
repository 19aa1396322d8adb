"""ppl_vae: variational autoencoders written as Pyro probabilistic programs.

A generative model p(x|z)p(z) is a ``PyroModule`` whose ``forward`` holds the
``pyro.sample`` statements; an amortized guide q(z|x) is a ``PyroModule`` with
the same signature. :func:`fit` trains any such pair by SVI with a Pyro ELBO,
and :func:`evaluate` reports the ELBO and the importance-sampled log p(x).
"""

__version__ = "0.1.0"

from .config import ExperimentConfig, load_config  # noqa: E402
from .data import DataConfig, Dataset, load_dataset  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    FitInterrupted,
    NonFiniteLossError,
    PplVaeError,
    RunDirError,
)
from .experiment import Experiment, build_experiment, fit_experiment, load_run  # noqa: E402
from .guides import GUIDES, NormalGuide, NormalGuideConfig, make_guide  # noqa: E402
from .inference import (  # noqa: E402
    ESTIMATORS,
    Callback,
    EstimatorConfig,
    EvalConfig,
    EvalResult,
    FitResult,
    OptimConfig,
    TrainConfig,
    evaluate,
    fit,
    importance_log_likelihood,
    log_weights,
    make_estimator,
)
from .likelihoods import LIKELIHOODS, make_likelihood  # noqa: E402
from .models import MODELS, VAE, VAEConfig, make_model  # noqa: E402
from .runs import RunDir  # noqa: E402

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FitInterrupted",
    "NonFiniteLossError",
    "PplVaeError",
    "RunDirError",
    "DataConfig",
    "Dataset",
    "load_dataset",
    "ExperimentConfig",
    "load_config",
    "Experiment",
    "build_experiment",
    "fit_experiment",
    "load_run",
    "GUIDES",
    "NormalGuide",
    "NormalGuideConfig",
    "make_guide",
    "ESTIMATORS",
    "Callback",
    "EstimatorConfig",
    "EvalConfig",
    "EvalResult",
    "FitResult",
    "OptimConfig",
    "TrainConfig",
    "evaluate",
    "fit",
    "importance_log_likelihood",
    "log_weights",
    "make_estimator",
    "LIKELIHOODS",
    "make_likelihood",
    "MODELS",
    "VAE",
    "VAEConfig",
    "make_model",
    "RunDir",
]
