"""Tests of ppl_vae.runs: run directories, metrics, atomic checkpoints and RNG state."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from ppl_vae.errors import CheckpointError, ConfigError, RunDirError
from ppl_vae.runs import (
    CHECKPOINT_FORMAT,
    RunDir,
    capture_rng_state,
    restore_rng_state,
)


def _state(epoch: int) -> dict:
    """A small checkpoint with every required key."""
    return {
        "epoch": epoch,
        "step": 0,
        "model": {"weight": torch.full((3, 2), float(epoch))},
        "guide": {"bias": torch.arange(4.0)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "rng": capture_rng_state(),
    }


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir.create(tmp_path, "run")


def _files(run: RunDir) -> set[str]:
    return {p.name for p in run.path.iterdir()}


# -- run directories -------------------------------------------------------------------------


def test_create_makes_a_new_directory_each_time(tmp_path):
    a = RunDir.create(tmp_path / "runs", "exp")
    b = RunDir.create(tmp_path / "runs", "exp")
    assert a.path == tmp_path / "runs" / "exp" and a.path.is_dir()
    assert b.path == tmp_path / "runs" / "exp-2" and b.path.is_dir()
    assert RunDir.create(tmp_path / "runs").path.name.startswith("run-")


def test_open_a_missing_directory_raises_run_dir_error(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(RunDirError, match="does not exist") as info:
        RunDir.open(missing)
    assert str(missing) in str(info.value)


def test_read_config_of_a_directory_without_one(run):
    with pytest.raises(RunDirError, match="config.yaml is missing") as info:
        RunDir.open(run.path).read_config()
    assert str(run.path) in str(info.value)


def test_config_round_trip(run):
    config = {"train": {"epochs": 3, "lr": 1e-5}, "model": {"name": "vae", "hidden_dims": [4, 2]}}
    run.write_config(config)
    assert RunDir.open(run.path).read_config() == config
    assert _files(run) == {"config.yaml"}


def test_write_json(run):
    path = run.write_json(run.EVALUATION, {"elbo": -1.5, "num_samples": 3})
    assert path == run.path / "evaluation.json"
    assert path.read_text().endswith("\n")
    import json

    assert json.loads(path.read_text()) == {"elbo": -1.5, "num_samples": 3}


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_append_and_read(run):
    assert run.read_metrics() == []
    rows = [{"epoch": e, "train_loss": 10.0 / e} for e in (1, 2, 3)]
    for row in rows:
        run.append_metrics(row)
    assert run.read_metrics() == rows
    assert len(run.metrics_path.read_text().splitlines()) == 3


def test_truncate_metrics_keeps_the_epochs_a_checkpoint_covers(run):
    for e in (1, 2, 3, 4):
        run.append_metrics({"epoch": e, "train_loss": float(e)})
    run.truncate_metrics(2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert _files(run) == {"metrics.jsonl"}  # no temporary file left behind
    run.truncate_metrics(0)
    assert run.read_metrics() == []


def test_a_partial_last_line_is_ignored(run):
    run.append_metrics({"epoch": 1, "train_loss": 1.0})
    run.append_metrics({"epoch": 2, "train_loss": 2.0})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a crash in the middle of a write
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    # a resume truncates to what the checkpoint covers, which drops the cut line,
    # so the rows appended after it are read back
    run.truncate_metrics(2)
    run.append_metrics({"epoch": 3, "train_loss": 3.0})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip(run):
    state = _state(1)
    run.save_checkpoint(state)
    assert run.has_checkpoint()
    loaded = RunDir.open(run.path).load_checkpoint()
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["epoch"] == 1 and loaded["step"] == 0
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert torch.equal(loaded["guide"]["bias"], state["guide"]["bias"])
    assert loaded["optimizer"] == state["optimizer"]


def test_checkpoint_save_leaves_no_temporary_files(run):
    run.save_checkpoint(_state(1))
    run.save_checkpoint(_state(2))
    assert _files(run) == {"checkpoint.pt"}
    assert run.load_checkpoint()["epoch"] == 2


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(run, monkeypatch):
    run.save_checkpoint(_state(1))

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk ...
        raise OSError("No space left on device")  # ... then the write fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        run.save_checkpoint(_state(2))
    monkeypatch.undo()

    assert _files(run) == {"checkpoint.pt"}  # the temporary file is gone
    loaded = run.load_checkpoint()
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["model"]["weight"], torch.full((3, 2), 1.0))


def test_truncated_checkpoint_raises_checkpoint_error(run):
    run.save_checkpoint(_state(1))
    data = run.checkpoint_path.read_bytes()
    run.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated") as info:
        run.load_checkpoint()
    assert str(run.checkpoint_path) in str(info.value)


def test_garbage_checkpoint_raises_checkpoint_error(run):
    run.checkpoint_path.write_bytes(b"\x00\x13garbage, not a checkpoint" * 20)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        run.load_checkpoint()


def test_missing_checkpoint_raises_checkpoint_error(run):
    assert not run.has_checkpoint()
    with pytest.raises(CheckpointError, match="checkpoint.pt is missing") as info:
        run.load_checkpoint()
    assert str(run.path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"epoch": 1, "model": {}}, id="dict-without-format"),
        pytest.param({"format": "someone-else/1", "epoch": 1}, id="other-format"),
        pytest.param(torch.ones(3), id="tensor"),
    ],
)
def test_a_file_that_is_not_a_ppl_vae_checkpoint(run, content):
    torch.save(content, run.checkpoint_path)
    with pytest.raises(CheckpointError, match="is not a ppl_vae checkpoint") as info:
        run.load_checkpoint()
    assert CHECKPOINT_FORMAT in str(info.value)


def test_an_incomplete_checkpoint_names_the_missing_keys(run):
    state = _state(1)
    del state["optimizer"], state["rng"]
    run.save_checkpoint(state)
    with pytest.raises(CheckpointError, match=r"incomplete: missing \['optimizer', 'rng'\]"):
        run.load_checkpoint()


class Payload:
    """A class that a weights-only load must refuse to rebuild."""


def test_checkpoints_do_not_unpickle_arbitrary_objects(run):
    torch.save({"format": CHECKPOINT_FORMAT, "payload": Payload()}, run.checkpoint_path)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        run.load_checkpoint()


# -- RNG and param-store state ---------------------------------------------------------------


def _draws() -> tuple:
    return (
        torch.rand(5),
        torch.randn(3),
        np.random.rand(5),
        np.random.randn(3),  # uses NumPy's cached second Gaussian
        [random.random() for _ in range(5)],
    )


def _assert_same(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
    assert a[4] == b[4]


def test_rng_capture_restore_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # leave a cached Gaussian in NumPy's state
    state = capture_rng_state()
    first = _draws()
    _draws()  # move every generator on
    restore_rng_state(state)
    _assert_same(_draws(), first)


def test_rng_state_survives_a_checkpoint(run):
    torch.manual_seed(4)
    np.random.seed(5)
    random.seed(6)
    np.random.randn(1)
    state = _state(1)  # captures the RNG states
    first = _draws()
    run.save_checkpoint(state)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng_state(run.load_checkpoint()["rng"])
    _assert_same(_draws(), first)


# -- run state that survives every way a process can stop (see the module docstring of ppl_vae.runs) -----


def _trained(tmp_path, epochs=2, name="run"):
    from ppl_vae.config import config_from_dict
    from ppl_vae.experiment import fit_experiment

    raw = {
        "data": {"name": "digits", "num_train": 60},
        "model": {"name": "vae", "latent_dim": 2, "hidden_dims": [8]},
        "guide": {"name": "amortized", "hidden_dims": [8]},
        "train": {"epochs": epochs, "batch_size": 30, "progress": False, "device": "cpu"},
        "eval": {"num_samples": 5},
    }
    run = RunDir(tmp_path / name)
    fit_experiment(config_from_dict(raw), run)
    return run


def _resume(run, *overrides):
    from ppl_vae.experiment import resume_experiment

    return resume_experiment(run, list(overrides))


def test_a_flipped_byte_in_a_checkpoint_is_one_clear_error(tmp_path):
    run = _trained(tmp_path)
    state = run.load_checkpoint()
    weight = state["guide"]["heads.z.linear.weight"]
    blob = bytearray(run.checkpoint_path.read_bytes())
    at = blob.find(weight.numpy().tobytes()[:16])  # the tensor's raw bytes, stored as they are in the zip
    assert at > 0
    blob[at + 3] ^= 0x10
    run.checkpoint_path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match the digest"):
        run.load_checkpoint()


def test_a_resume_without_a_checkpoint_is_an_error_and_changes_nothing(tmp_path):
    run = _trained(tmp_path)
    run.checkpoint_path.unlink()
    before = run.metrics_path.read_text()
    with pytest.raises(CheckpointError, match="cannot resume .* it has no checkpoint .* start it again with: ppl-vae fit"):
        _resume(run, "train.epochs=3")
    assert run.metrics_path.read_text() == before


def test_a_damaged_metrics_line_is_set_aside_and_the_valid_rows_kept(tmp_path, caplog):
    run = _trained(tmp_path, epochs=3)
    lines = run.metrics_path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # epoch 2's row cut in half
    run.metrics_path.write_text("\n".join(lines) + "\n")
    assert [r["epoch"] for r in run.read_metrics()] == [1, 3]  # the rows after it are still read
    with caplog.at_level("WARNING", logger="ppl_vae"):
        _resume(run, "train.epochs=4")
    assert [r["epoch"] for r in run.read_metrics()] == [1, 3, 4]
    assert (run.path / "metrics.damaged.txt").read_text() == lines[1] + "\n"
    assert any("damaged line" in r.getMessage() for r in caplog.records)


def test_metrics_written_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    # kill -9 after an epoch's metrics row and before its checkpoint: the row is not covered, the epoch runs again
    run = _trained(tmp_path, epochs=2)
    run.append_metrics({"epoch": 3, "train_loss": -1.0})
    _resume(run, "train.epochs=3")
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[2]["train_loss"] != -1.0


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    run = _trained(tmp_path)
    with run.lock():
        with pytest.raises(RunDirError, match=rf"is being trained by another process \(pid {os.getpid()}\)"):
            _resume(run, "train.epochs=3")
    _resume(run, "train.epochs=3")  # released


@pytest.mark.slow  # starts a Python process
def test_the_lock_of_a_killed_process_is_released(tmp_path):
    run = _trained(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; from ppl_vae.runs import RunDir; held = RunDir({str(run.path)!r}).lock(); held.__enter__(); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match="another process"):
            _resume(run, "train.epochs=3")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    _resume(run, "train.epochs=3")


def test_resuming_with_fewer_epochs_than_done_is_refused_and_leaves_the_config(tmp_path):
    run = _trained(tmp_path, epochs=2)
    before = run.config_path.read_text()
    with pytest.raises(ConfigError, match="has done 2 epochs, more than train.epochs=1"):
        _resume(run, "train.epochs=1")
    assert run.config_path.read_text() == before


def test_an_edited_config_is_refused_on_resume_as_an_override_is(tmp_path):
    run = _trained(tmp_path, epochs=2)
    raw = run.read_config()
    raw["optim"]["lr"] = 0.05
    run.write_config(raw)
    with pytest.raises(ConfigError, match=r"differs from the one its checkpoint was trained with in optim.lr \(0.001 in"):
        _resume(run, "train.epochs=3")
    with pytest.raises(ConfigError, match="may change only train"):
        _resume(run, "optim.lr=0.05")


def test_a_temporary_file_left_by_a_crash_is_removed_when_the_run_is_trained_again(tmp_path):
    run = _trained(tmp_path, epochs=1)
    stale = run.path / ".checkpoint.pt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")
    _resume(run, "train.epochs=2")
    assert not stale.exists()
