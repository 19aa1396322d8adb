"""Estimators, the training loop, and evaluation."""

from .estimators import ESTIMATORS, EstimatorConfig, make_estimator
from .evaluate import EvalConfig, EvalResult, evaluate, importance_log_likelihood, log_weights
from .fit import Callback, FitContext, FitResult, OptimConfig, TrainConfig, check_data, fit, resolve_device

__all__ = [
    "ESTIMATORS",
    "EstimatorConfig",
    "make_estimator",
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
]
