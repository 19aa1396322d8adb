"""ppl_vae: variational autoencoders written as Pyro probabilistic programs.

A generative model p(x|z)p(z) is a Pyro model: a ``PyroModule`` whose ``forward`` holds the
``pyro.sample`` statements, or a plain function that registers its networks with ``pyro.module``.
An amortized guide q(z|x) is a Pyro guide of either form with the same signature
(:mod:`ppl_vae.contract` says what the tools need from them). :func:`fit` trains any such pair by
SVI with a Pyro ELBO, and :func:`evaluate` reports the ELBO and the importance-sampled log p(x).
"""

__version__ = "0.2.0"

from .compile import compile_spec  # noqa: E402
from .config import ExperimentConfig, load_config  # noqa: E402
from .contract import DATA_PLATE, DATA_SITE, PARTICLE_PLATE, ParticleLoopWarning  # noqa: E402
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
from .guides import GUIDES, AmortizedGuide, AmortizedGuideConfig, make_guide  # noqa: E402
from .inference import (  # noqa: E402
    ESTIMATORS,
    Callback,
    EstimatorConfig,
    EvalConfig,
    EvalResult,
    FitResult,
    KLWeighting,
    OptimConfig,
    TrainConfig,
    estimator_config,
    evaluate,
    fit,
    importance_log_likelihood,
    kl_weighted,
    log_weights,
    make_estimator,
)
from .likelihoods import LIKELIHOODS, make_likelihood  # noqa: E402
from .models import MODELS, VAE, VAEConfig, make_model  # noqa: E402
from .programs import FunctionProgram, as_module, load_target  # noqa: E402
from .runs import RunDir  # noqa: E402
from .spec import (  # noqa: E402
    GuideFactorSpec,
    GuideSpec,
    LatentSpec,
    ModelSpec,
    NetSpec,
    ObservedSpec,
)

__all__ = [
    "__version__",
    "DATA_PLATE",
    "DATA_SITE",
    "PARTICLE_PLATE",
    "ParticleLoopWarning",
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
    "AmortizedGuide",
    "AmortizedGuideConfig",
    "make_guide",
    "ESTIMATORS",
    "Callback",
    "EstimatorConfig",
    "EvalConfig",
    "EvalResult",
    "FitResult",
    "KLWeighting",
    "OptimConfig",
    "TrainConfig",
    "estimator_config",
    "evaluate",
    "fit",
    "importance_log_likelihood",
    "kl_weighted",
    "log_weights",
    "make_estimator",
    "LIKELIHOODS",
    "make_likelihood",
    "MODELS",
    "VAE",
    "VAEConfig",
    "make_model",
    "FunctionProgram",
    "as_module",
    "load_target",
    "RunDir",
    "compile_spec",
    "ModelSpec",
    "GuideSpec",
    "LatentSpec",
    "GuideFactorSpec",
    "NetSpec",
    "ObservedSpec",
]
