"""The PixelCNN prior over VQ-VAE codes: normalisation, sampling, training, decoding, the CLI (fit-prior)."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from ppl_vae.cli import main
from ppl_vae.guides import make_guide
from ppl_vae.inference.code_prior import fit_code_prior, fit_prior_on_codes, load_code_prior
from ppl_vae.models import VQVAEConfig, make_model
from ppl_vae.models.code_prior import CodePriorConfig, PixelCNNPrior
from ppl_vae.plots import sample_images

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = CodePriorConfig(num_layers=2, channels=8, epochs=1, batch_size=50)


def _tiny_vqvae(seed: int = 0):
    torch.manual_seed(seed)
    model = make_model("vqvae", (1, 8, 8), VQVAEConfig(num_codes=6, code_dim=4, channels=(4, 8)))  # a 2x2 grid of codes
    return model, make_guide("vqvae", model)


def test_probabilities_sum_to_one_over_every_grid():
    torch.manual_seed(0)
    prior = PixelCNNPrior(3, (2, 2), TINY).eval()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(81, 2, 2)  # every 2x2 grid, K = 3
    with torch.no_grad():
        total = prior.log_prob(grids).double().exp().sum()
    assert abs(float(total) - 1.0) < 1e-5  # float32 softmax rounding over 81 terms


def test_log_prob_of_a_sample_is_the_sum_of_its_steps():
    torch.manual_seed(1)
    prior = PixelCNNPrior(5, (3, 4), TINY).eval()
    codes, steps = prior.sample_with_log_probs(7)
    assert codes.shape == (7, 3, 4) and codes.dtype == torch.long and int(codes.max()) < 5
    with torch.no_grad():
        torch.testing.assert_close(prior.log_prob(codes), steps.sum(-1), atol=1e-4, rtol=0)
    flat = PixelCNNPrior(5, (6,), TINY).eval()  # a set of codes (mlp VQ-VAE): a 1 x n grid
    assert flat.sample(2).shape == (2, 6) and flat.log_prob(flat.sample(2)).shape == (2,)


def test_training_on_skewed_codes_beats_the_uniform_prior():
    torch.manual_seed(0)
    probs = torch.tensor([0.7, 0.2, 0.1])  # entropy 1.157 bits; uniform: log2 3 = 1.585 bits
    codes = torch.multinomial(probs, 300 * 4, replacement=True).reshape(300, 2, 2)
    prior = PixelCNNPrior(3, (2, 2), TINY)
    curve = fit_prior_on_codes(prior, codes, CodePriorConfig(num_layers=2, channels=8, epochs=8, batch_size=50, lr=0.01))
    with torch.no_grad():
        bpd = float(prior.bits_per_dim(codes).mean())
    assert bpd < 1.3 < math.log2(3), (bpd, curve)
    assert bpd > 1.157 - 0.05  # no better than the data's entropy (up to sampling noise)


def test_learned_prior_samples_decode_to_images_and_save_load(tmp_path):
    model, guide = _tiny_vqvae()
    x = (torch.rand(60, 1, 8, 8) < 0.3).float()
    prior, metrics = fit_code_prior(model, guide, x, TINY, run_dir=tmp_path)
    assert len(metrics["train_bpd"]) == 1 and metrics["uniform_bpd"] == pytest.approx(math.log2(6))
    loaded = load_code_prior(tmp_path)
    codes = torch.randint(6, (4, 2, 2))
    torch.testing.assert_close(loaded.log_prob(codes), prior.log_prob(codes))
    assert load_code_prior(tmp_path / "nowhere") is None
    model.set_code_prior(loaded)
    assert "learned PixelCNN prior" in model.sample_note
    assert sample_images(model, 5, (1, 8, 8), seed=0).shape == (5, 1, 8, 8)
    z_dist = model.z_dist()
    torch.testing.assert_close(z_dist.log_prob(model.codebook[codes]), loaded.log_prob(codes))
    model.set_code_prior(None)
    assert "uniformly" in model.sample_note
    with pytest.raises(ValueError, match="codes of shape"):
        model.set_code_prior(PixelCNNPrior(6, (3, 3), TINY))


def _vqvae_config(tmp_path: Path, prior: dict | None) -> str:
    """The shipped digits VQ-VAE config with ``prior`` as its prior section (None: without one)."""
    raw = yaml.safe_load((CONFIGS / "vqvae_digits.yaml").read_text())
    raw.pop("prior", None)
    if prior is not None:
        raw["prior"] = prior
    path = tmp_path / "vqvae.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_fit_prior_evaluate_sample(tmp_path, capsys):
    config = _vqvae_config(tmp_path, None)  # a run without a prior: section, given one afterwards
    quick = ["--set", "train.epochs=1", "--set", "train.progress=false"]
    assert main(["fit", config, *quick, "--out-dir", str(tmp_path), "--name", "vq", "--no-figures"]) == 0
    run = tmp_path / "vq"
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert "codes drawn uniformly: no learned prior yet" in capsys.readouterr().out
    assert main(["fit-prior", str(run), "--epochs", "2", "--num-layers", "2", "--channels", "8"]) == 0
    assert "bits per code" in capsys.readouterr().out
    saved = json.loads((run / "prior" / "prior.json").read_text())
    assert len(saved["train_bpd"]) == 2 and saved["val_bpd"] < saved["uniform_bpd"] == 5.0
    assert main(["evaluate", str(run)]) == 0
    assert "code prior (PixelCNN)" in capsys.readouterr().out
    assert json.loads((run / "evaluation.json").read_text())["prior_bits_per_dim"] < 5.0
    assert main(["sample", str(run), "-n", "16"]) == 0
    assert "codes drawn from the learned PixelCNN prior" in capsys.readouterr().out
    assert (run / "samples.png").exists()


def _prior_config(tmp_path: Path, prior_epochs: int = 3) -> str:
    return _vqvae_config(tmp_path, {"num_layers": 2, "channels": 8, "epochs": prior_epochs})


def _fit(*extra: str) -> int:
    return main(["fit", *extra, "--set", "train.progress=false", "--no-figures"])


def test_a_prior_section_trains_the_prior_as_a_second_stage_and_a_resume_skips_or_retrains_it(tmp_path, capsys):
    config = _prior_config(tmp_path)
    assert _fit(str(config), "--set", "train.epochs=2", "--out-dir", str(tmp_path), "--name", "run") == 0
    run = tmp_path / "run"
    saved = json.loads((run / "prior" / "prior.json").read_text())
    assert saved["vqvae_epochs"] == 2 and len(saved["train_bpd"]) == 3 and saved["train_bpd"][-1] < saved["uniform_bpd"]
    assert "stage 2 of 2" in capsys.readouterr().out
    stamp = (run / "prior" / "prior.pt").stat().st_mtime_ns
    assert _fit("--resume", str(run)) == 0  # nothing new: the prior of these codes is kept
    assert "already trained" in capsys.readouterr().out and (run / "prior" / "prior.pt").stat().st_mtime_ns == stamp
    assert _fit("--resume", str(run), "--set", "train.epochs=3") == 0  # the VQ-VAE trained on: its codes changed
    assert json.loads((run / "prior" / "prior.json").read_text())["vqvae_epochs"] == 3
    assert len((run / "prior" / "metrics.jsonl").read_text().splitlines()) == 3  # retrained from scratch, not appended
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert "learned PixelCNN prior" in capsys.readouterr().out


def test_an_interrupted_prior_stage_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    from ppl_vae.inference import code_prior
    from ppl_vae.inference.loop import Callback

    class StopAfterOneEpoch(Callback):
        def on_epoch_end(self, ctx, metrics):
            ctx.request_stop()

    real_fit = code_prior.fit
    monkeypatch.setattr(code_prior, "fit", lambda *a, **k: real_fit(*a, **k, callbacks=[StopAfterOneEpoch()]))
    config = _prior_config(tmp_path)
    assert _fit(str(config), "--set", "train.epochs=2", "--out-dir", str(tmp_path), "--name", "run") == 130
    assert re.search(r"interrupted in stage 2 \(the code prior\); resume with: ppl-vae fit --resume .*run$",
                     capsys.readouterr().err.strip())
    run = tmp_path / "run"
    assert not (run / "prior" / "prior.pt").exists() and (run / "prior" / "checkpoint.pt").exists()
    first_epoch = json.loads((run / "prior" / "metrics.jsonl").read_text().splitlines()[0])
    monkeypatch.setattr(code_prior, "fit", real_fit)
    assert _fit("--resume", str(run)) == 0
    rows = [json.loads(line) for line in (run / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0] == first_epoch  # epochs 2 and 3 continued the interrupted training
    assert json.loads((run / "prior" / "prior.json").read_text())["train_bpd"] == pytest.approx(
        [r["train_loss"] / (4 * math.log(2)) for r in rows])


def test_a_prior_section_needs_a_vqvae(tmp_path):
    from ppl_vae.config import config_from_dict
    from ppl_vae.errors import ConfigError

    with pytest.raises(ConfigError, match="prior: section.*VQ-VAE.*model 'vae'"):
        config_from_dict({"model": {"name": "vae"}, "prior": {"epochs": 2}})
    with pytest.raises(ConfigError, match="prior"):
        config_from_dict({"model": {"name": "vqvae"}, "guide": {"name": "vqvae"}, "prior": {"epochs": 0}})
