"""Estimators, the training loop, evaluation and diagnostics."""

from .checks import check_estimator
from .diagnostics import (
    PSISDiagnostics,
    importance_diagnostics,
    posterior_inference_data,
    psis_diagnostics,
)
from .estimators import (
    ESTIMATORS,
    EstimatorConfig,
    estimator_config,
    make_estimator,
    parse_estimator,
)
from .evaluate import (
    EvalConfig,
    EvalResult,
    evaluate,
    importance_log_likelihood,
    log_weights,
)
from .fit import Callback, FitContext, FitResult, check_data, fit
from .gradients import GradientStats, gradient_stats
from .iwae import IWAE_ELBO
from .objectives import KLWeighted_ELBO, KLWeighting, kl_weighted
from .semisup import SemiSupervised_ELBO
from .terms import add_penalty
from .training import OptimConfig, TrainConfig, TrainingState, resolve_device

__all__ = [
    "ESTIMATORS",
    "EstimatorConfig",
    "check_estimator",
    "estimator_config",
    "make_estimator",
    "parse_estimator",
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "importance_log_likelihood",
    "add_penalty",
    "log_weights",
    "Callback",
    "FitContext",
    "FitResult",
    "OptimConfig",
    "TrainConfig",
    "TrainingState",
    "check_data",
    "fit",
    "resolve_device",
    "GradientStats",
    "gradient_stats",
    "IWAE_ELBO",
    "PSISDiagnostics",
    "importance_diagnostics",
    "posterior_inference_data",
    "psis_diagnostics",
    "KLWeighted_ELBO",
    "KLWeighting",
    "SemiSupervised_ELBO",
    "kl_weighted",
]
