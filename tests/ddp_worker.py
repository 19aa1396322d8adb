"""The body of the data-parallel tests: what each rank of a 2-process ``gloo`` group runs.

:func:`run_world` starts ``size`` processes with ``torch.multiprocessing`` and the environment ``torchrun``
would give them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); each runs
:func:`scenarios`, and rank 0 saves the results for the test in the parent process to compare with a
single-process run of the same thing (:func:`fit_categorical`, :func:`evaluate_vae`, :func:`fit_vae`).
"""

from __future__ import annotations

import faulthandler
import os
import socket
from pathlib import Path

import pyro
import torch

from ppl_vae import (
    Callback,
    DataConfig,
    EvalConfig,
    TrainConfig,
    evaluate,
    fit,
    load_dataset,
)
from ppl_vae.config import config_from_dict
from ppl_vae.errors import FitInterrupted
from ppl_vae.experiment import build_experiment, training_estimator
from ppl_vae.inference.distributed import init_distributed, leave_distributed

#: a model whose ELBO is exact (its one latent, a categorical, is summed out in the guide): two processes
#: and one then take the same steps up to floating-point summation order
CATEGORICAL = {
    "data": {"name": "digits", "num_train": 37, "binarize": "dynamic", "seed": 0},
    "model": {
        "name": "spec",
        "latents": [{"name": "c", "family": "categorical", "dim": 4}],
        "observed": {"name": "x", "parents": ["c"], "net": {"hidden_dims": [16]}},
    },
    "guide": {"name": "spec", "factors": [{"name": "c", "head": "categorical", "net": {"hidden_dims": [16]}}]},
    "estimator": {"name": "enum"},
    "optim": {"lr": 0.01},
    "train": {"epochs": 3, "batch_size": 8, "progress": False, "device": "cpu", "val_every": 0},
}


def _params(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def fit_categorical() -> dict[str, torch.Tensor]:
    """Three epochs of the exact-ELBO categorical model: 5 steps an epoch, the last of 5 points."""
    config = config_from_dict(CATEGORICAL)
    exp = build_experiment(config)
    with pyro.get_param_store().scope():
        result = fit(exp.model, exp.guide, exp.data, estimator=training_estimator(config), optim=config.optim, train=config.train)
    return {**_params(result.model, result.guide), "loss": torch.tensor([row["train_loss"] for row in result.history])}


def evaluate_vae() -> torch.Tensor:
    """The ELBO and log p(x) of an untrained VAE on 45 points in 4 batches (K = 7)."""
    from tests.helpers import tiny_vae

    torch.manual_seed(0)
    model, guide = tiny_vae()
    x = load_dataset(DataConfig(name="digits", num_train=45, binarize="static")).x_train
    result = evaluate(model, guide, x, config=EvalConfig(num_samples=7, batch_size=12, seed=3))
    return torch.tensor([result.elbo, result.elbo_stderr, result.log_likelihood, result.log_likelihood_stderr, result.num_points])


class StopOnRankOne(Callback):
    """Asks rank 1 alone to stop after step 1 of epoch 1: every rank must stop at the same later step."""

    def on_step(self, ctx, loss) -> None:
        if torch.distributed.get_rank() == 1 and (ctx.epoch, ctx.step) == (1, 1):
            ctx.request_stop()


def fit_vae(run_dir: Path | None, epochs: int, resume: bool = False, callbacks=()) -> dict[str, torch.Tensor]:
    """A small Gaussian VAE (trace estimator) on the digits (4 steps an epoch), into ``run_dir``."""
    from tests.helpers import tiny_vae

    torch.manual_seed(0)
    model, guide = tiny_vae()
    data = load_dataset(DataConfig(name="digits", num_train=60, binarize="dynamic"))
    train = TrainConfig(epochs=epochs, batch_size=16, progress=False, device="cpu", val_every=1)
    with pyro.get_param_store().scope():
        result = fit(model, guide, data, train=train, run_dir=run_dir, resume=resume, callbacks=list(callbacks))
    return {**_params(result.model, result.guide), "loss": torch.tensor([row["train_loss"] for row in result.history])}


def scenarios(rank: int, out: Path) -> None:
    """Everything the 2-process tests look at, in one group (starting processes is the slow part)."""
    assert init_distributed("cpu").size > 1
    results = {
        "categorical": fit_categorical(),
        "evaluate": evaluate_vae(),
        "vae_straight": fit_vae(out / "straight", 4),
    }
    fit_vae(out / "resumed", 2)
    results["vae_resumed"] = fit_vae(out / "resumed", 4, resume=True)
    try:
        fit_vae(out / "stopped", 4, callbacks=[StopOnRankOne()])
    except FitInterrupted as err:
        results["stopped_message"] = str(err)
    results["vae_stopped_resumed"] = fit_vae(out / "stopped", 4, resume=True)
    if rank == 0:
        torch.save(results, out / "results.pt")
    (out / f"rank{rank}.done").touch()  # everything compared was computed; what follows is the teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, out: str, target: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    faulthandler.enable()  # a rank that aborts (SIGABRT from C++) prints where it was
    pyro.enable_validation(True)
    try:
        globals()[target](rank, Path(out))
    finally:
        leave_distributed()
    leave_distributed(0)  # what a script under torchrun should do: its docstring says why


def run_world(size: int, out: Path, target: str = "scenarios") -> None:
    """Run ``target(rank, out)`` in ``size`` processes that form one ``gloo`` group; raises if any fails."""
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_rank_main, args=(size, _free_port(), str(out), target), nprocs=size, start_method="spawn")
    except mp.ProcessExitedException:
        # A gloo process that went through the interpreter's finalization has (rarely) aborted with
        # "terminate called without an active exception"; leave_distributed(0) now skips finalization.
        # Should one abort still, it is accepted only when every rank had finished its work; an abort
        # before that is a failure. faulthandler (above) prints where a rank was.
        if not all((out / f"rank{r}.done").exists() for r in range(size)):
            raise
