"""Data-parallel training (:mod:`ppl_vae.inference.distributed`): shards of batches, and a real 2-process
``gloo`` group against one process (the group's work is in :mod:`tests.ddp_worker`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppl_vae.batches import Batches, part
from ppl_vae.errors import ConfigError
from ppl_vae.inference.distributed import SINGLE, World, env_world, sum_gradients
from ppl_vae.labelled import MixedBatches

from . import ddp_worker

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (5, 3), (1, 2), (0, 2), (7, 7)])
def test_parts_cover_the_range_once_in_order(n, size):
    parts = [part(3, 3 + n, r, size) for r in range(size)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(3, 3 + n))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def _epoch(batches, epoch=1):
    return [(step, xb, yb) for step, xb, yb in batches.epoch(epoch)]


def test_shards_of_every_batch_are_the_single_process_batch_with_its_binarization_draws():
    torch.manual_seed(0)
    x, y = torch.rand(23, 5), torch.arange(23)
    whole = _epoch(Batches(x, y, batch_size=6, seed=4, binarize=True))
    shards = [_epoch(Batches(x, y, batch_size=6, seed=4, binarize=True).shard(r, 2)) for r in range(2)]
    for (step, xb, yb), *ranks in zip(whole, *shards):
        assert torch.equal(torch.cat([s[1] for s in ranks]), xb)
        assert torch.equal(torch.cat([s[2] for s in ranks]), yb)
    assert [Batches(x, batch_size=6).batch_points(s) for s in range(4)] == [6, 6, 6, 5]


def test_mixed_batch_shards_keep_the_labelled_share_on_every_rank():
    x = torch.rand(50, 3)
    y = torch.full((50,), -1)
    y[:10] = torch.arange(10) % 3
    sizes = []
    for rank in range(2):
        batches = MixedBatches(x, y, batch_size=10, labelled_per_batch=4, seed=1).shard(rank, 2)
        sizes.append([(int((yb >= 0).sum()), int((yb < 0).sum())) for _, _, yb in batches.epoch(0)])
    whole = MixedBatches(x, y, batch_size=10, labelled_per_batch=4, seed=1)
    assert all(s == (2, 3) for s in sizes[0][:-1]) and all(s == (2, 3) for s in sizes[1][:-1])
    # 40 unlabelled points, 6 a batch: the last batch has 4 of them, 2 on each rank
    assert sizes[0][-1] == sizes[1][-1] == (2, 2) and whole.batch_points(len(whole) - 1) == 8
    for (_, xa, ya), (_, xb, yb), (_, xw, yw) in zip(
        MixedBatches(x, y, batch_size=10, labelled_per_batch=4, seed=1).shard(0, 2).epoch(2),
        MixedBatches(x, y, batch_size=10, labelled_per_batch=4, seed=1).shard(1, 2).epoch(2),
        whole.epoch(2),
    ):
        assert sorted(torch.cat([ya, yb]).tolist()) == sorted(yw.tolist())
        assert torch.equal(torch.cat([xa, xb]).sum(0), xw.sum(0)) or torch.allclose(torch.cat([xa, xb]).sum(0), xw.sum(0))


def test_outside_torchrun_there_is_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert env_world() == SINGLE and not SINGLE.distributed and SINGLE.is_main
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    assert sum_gradients([p], 1.5, SINGLE, stop=True) == (1.5, True) and torch.equal(p.grad, torch.full((2,), 3.0))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be an integer"):
        env_world()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 and WORLD_SIZE=2"):
        env_world()
    assert World(1, 2).distributed and not World(1, 2).is_main


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process gloo group running every scenario; their results, and the folder they wrote in."""
    out = tmp_path_factory.mktemp("ddp")
    ddp_worker.run_world(2, out)
    return torch.load(out / "results.pt"), out


def test_two_ranks_with_half_batches_take_the_single_process_steps(two_ranks):
    """Exact ELBO (the categorical is summed out), so only the order of floating-point sums differs: 15
    Adam steps (5 an epoch, the last of 5 points split 3 and 2) agree to 1e-5."""
    results, _ = two_ranks
    single = ddp_worker.fit_categorical()
    ranks = results["categorical"]
    assert single.keys() == ranks.keys()
    for key in single:
        torch.testing.assert_close(ranks[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
    assert not torch.equal(ranks["loss"][0], ranks["loss"][-1])  # it trained


def test_evaluation_on_two_ranks_equals_one_process(two_ranks):
    results, _ = two_ranks
    torch.testing.assert_close(results["evaluate"], ddp_worker.evaluate_vae(), rtol=1e-12, atol=1e-12)


def test_rank_zero_checkpoint_resumes_to_the_uninterrupted_result(two_ranks):
    results, out = two_ranks
    straight, resumed = results["vae_straight"], results["vae_resumed"]
    for key in straight:
        if key != "loss":
            assert torch.equal(straight[key], resumed[key]), key
    assert torch.equal(straight["loss"][2:], resumed["loss"])
    rows = (out / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and sorted(p.name for p in (out / "resumed").iterdir() if not p.name.startswith(".")) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]


def test_a_stop_asked_on_one_rank_stops_every_rank_at_the_same_step_and_resumes(two_ranks):
    """Rank 1 alone asks after epoch 2's second step; the request rides in the next step's gradient
    collective, so both ranks checkpoint after the third step, and the resumed run equals the straight one."""
    results, _ = two_ranks
    assert "at epoch 2, step 3" in results["stopped_message"]
    straight, resumed = results["vae_straight"], results["vae_stopped_resumed"]
    for key in straight:
        if key != "loss":
            assert torch.equal(straight[key], resumed[key]), key
    assert torch.equal(straight["loss"][1:], resumed["loss"])


def test_one_process_refuses_a_two_process_checkpoint(two_ranks):
    _, out = two_ranks
    with pytest.raises(ConfigError, match="trained by 2 process.*this resume has 1.*--nproc-per-node 2"):
        ddp_worker.fit_vae(out / "resumed", 5, resume=True)


@pytest.mark.slow
def test_torchrun_quick_start_two_processes_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ppl_vae.cli", "fit"]
    first = subprocess.run(
        [*command, str(REPO / "configs" / "vae_digits.yaml"), "--set", "train.epochs=5", "--set", "train.progress=false",
         "--out-dir", str(tmp_path), "--name", "run"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("done: 5 epochs on cpu") == 1  # rank 0 alone reports
    run = tmp_path / "run"
    assert {"checkpoint.pt", "config.yaml", "metrics.jsonl", "samples.png", "curves.png"} <= {p.name for p in run.iterdir()}
    resumed = subprocess.run(
        [*command, "--resume", str(run), "--set", "train.epochs=6", "--no-figures"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6


def test_leave_distributed_with_a_code_flushes_and_exits_with_it():
    script = "from ppl_vae.inference.distributed import leave_distributed\nprint('written before the exit')\nleave_distributed(3)\nprint('never')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 3 and done.stdout == "written before the exit\n", (done.returncode, done.stdout, done.stderr[-500:])
