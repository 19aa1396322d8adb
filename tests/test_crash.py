"""A real ``ppl-vae fit`` process killed (SIGKILL) at several points, or stopped by SIGTERM, then resumed:
every tensor of the final checkpoint and every metrics row equal those of an uninterrupted run.

The kills are injected from outside the package: a ``sitecustomize`` module on the child's PYTHONPATH wraps
one function (a training step, the metrics append, the checkpoint's ``torch.save`` or its ``os.replace``)
and sends SIGKILL to its own process at the chosen call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from ppl_vae.runs import RunDir

pytestmark = pytest.mark.slow  # each case starts Python processes

CONFIG = {
    "data": {"name": "digits", "num_train": 120},
    "model": {"name": "vae", "latent_dim": 2, "hidden_dims": [16]},
    "guide": {"name": "amortized", "hidden_dims": [16]},
    "train": {"epochs": 3, "batch_size": 30, "progress": False, "device": "cpu"},
    "eval": {"num_samples": 5},
}

SITECUSTOMIZE = textwrap.dedent(
    '''
    import os, signal
    where, at = os.environ.get("PPL_VAE_KILL", ":").split(":")
    SIGNAL = getattr(signal, os.environ.get("PPL_VAE_SIGNAL", "SIGKILL"))
    if where:
        at = int(at)
        calls = {"n": 0}

        def kill_on_call():
            calls["n"] += 1
            return calls["n"] == at

        if where == "step":  # in the middle of an epoch, after a step
            import importlib
            fit = importlib.import_module("ppl_vae.inference.loop")
            original = fit.Stepper.__call__
            def step(self, *args):
                loss = original(self, *args)
                if kill_on_call():
                    os.kill(os.getpid(), SIGNAL)
                return loss
            fit.Stepper.__call__ = step
        elif where == "metrics":  # after an epoch's metrics row, before its checkpoint
            from ppl_vae.runs import RunDir
            original = RunDir.append_metrics
            def append(self, row):
                original(self, row)
                if kill_on_call():
                    os.kill(os.getpid(), signal.SIGKILL)
            RunDir.append_metrics = append
        elif where == "save":  # inside the checkpoint write: half a temporary file, then death
            import torch
            original = torch.save
            def save(obj, f, *args, **kwargs):
                if isinstance(obj, dict) and "digest" in obj and kill_on_call():
                    f.write(b"PK\\x03\\x04 half a checkpoint")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(obj, f, *args, **kwargs)
            torch.save = save
        elif where == "replace":  # the checkpoint written, not yet renamed into place
            original = os.replace
            def replace(src, dst, *args, **kwargs):
                if "checkpoint" in str(dst) and kill_on_call():
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(src, dst, *args, **kwargs)
            os.replace = replace
    '''
)


def _fit(tmp_path: Path, *args: str, kill: str = "", sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]), "PPL_VAE_KILL": kill, "PPL_VAE_SIGNAL": sig}
    return subprocess.run(
        [sys.executable, "-m", "ppl_vae.cli", "fit", *args, "--no-figures"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )


def _final(run: Path) -> tuple[dict, list[float]]:
    state = RunDir(run).load_checkpoint()
    tensors = {}

    def collect(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                collect(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                collect(f"{prefix}.{i}", v)
        elif torch.is_tensor(value):
            tensors[prefix] = value

    for key in ("model", "guide", "optimizer", "scheduler"):
        collect(key, state[key])
    return tensors, [row["train_loss"] for row in RunDir(run).read_metrics()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    (tmp / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    done = _fit(tmp, "config.yaml", "--name", "full")
    assert done.returncode == 0, done.stderr
    return _final(tmp / "runs" / "full")


@pytest.mark.parametrize("kill", ["step:6", "metrics:2", "save:1", "save:2", "replace:2"])
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_result(tmp_path, reference, kill):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    killed = _fit(tmp_path, "config.yaml", "--name", "cut", kill=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "runs" / "cut"
    if not (run / "checkpoint.pt").exists():  # killed before the first checkpoint: resuming is refused, clearly
        refused = _fit(tmp_path, "--resume", str(run))
        assert refused.returncode == 2 and "has no checkpoint" in refused.stderr
        assert _fit(tmp_path, "config.yaml", "--name", "cut2").returncode == 0
        run = tmp_path / "runs" / "cut2"
    else:
        resumed = _fit(tmp_path, "--resume", str(run))
        assert resumed.returncode == 0, resumed.stderr
    tensors, losses = _final(run)
    ref_tensors, ref_losses = reference
    assert tensors.keys() == ref_tensors.keys()
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors)
    assert losses == ref_losses
    assert not list(run.glob(".*.tmp-*")), "a temporary file was left behind"


def test_sigterm_checkpoints_says_so_and_exits_143_then_resumes(tmp_path, reference):
    # What a scheduler or `docker stop` sends, here after the 6th step (in the second epoch)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    stopped = _fit(tmp_path, "config.yaml", "--name", "term", kill="step:6", sig="SIGTERM")
    run = tmp_path / "runs" / "term"
    assert stopped.returncode == 143, stopped.stderr
    assert "interrupted by SIGTERM at epoch 2, step 2" in stopped.stderr and "ppl-vae fit --resume runs/term" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = RunDir(run).load_checkpoint()
    assert (state["epoch"], state["step"]) == (1, 2)
    assert _fit(tmp_path, "--resume", str(run)).returncode == 0
    tensors, losses = _final(run)
    assert losses == reference[1] and all(torch.equal(tensors[k], reference[0][k]) for k in tensors)
