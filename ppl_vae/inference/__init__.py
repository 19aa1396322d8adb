"""Estimators, the training loop, evaluation and diagnostics."""

from .estimators import ESTIMATORS, EstimatorConfig, check_estimator, make_estimator, parse_estimator
from .evaluate import EvalConfig, EvalResult, evaluate, importance_log_likelihood, log_weights
from .fit import Callback, FitContext, FitResult, OptimConfig, TrainConfig, check_data, fit, resolve_device
from .gradients import GradientStats, gradient_stats
from .diagnostics import PSISDiagnostics, importance_diagnostics, posterior_inference_data, psis_diagnostics
from .iwae import IWAE_ELBO
from .objectives import KLWeighted_ELBO, KLWeighting, make_objective

__all__ = [
    "ESTIMATORS",
    "EstimatorConfig",
    "check_estimator",
    "make_estimator",
    "parse_estimator",
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "importance_log_likelihood",
    "log_weights",
    "Callback",
    "FitContext",
    "FitResult",
    "OptimConfig",
    "TrainConfig",
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
    "make_objective",
]
