"""Tests of the ``ppl-vae`` command line, run in-process through ``ppl_vae.cli.main``.

One tiny fit (2 epochs on 200 of the 8x8 digits) is shared by the module; tests that
change a run work on a copy of it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_vae.cli import main
from ppl_vae.runs import RunDir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = CONFIGS / "vae_digits.yaml"
TINY = ["--set", "train.epochs=2", "--set", "train.progress=false", "--set", "data.num_train=200"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _metrics_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[int, Path]:
    """Exit status and run directory of ``ppl-vae fit configs/vae_digits.yaml`` for 2 epochs on 200 digits."""
    out = tmp_path_factory.mktemp("cli_runs")
    code = main(["fit", str(DIGITS), *TINY, "--out-dir", str(out), "--name", "digits"])
    return code, out / "digits"


@pytest.fixture
def run(fitted, tmp_path) -> Path:
    """A private copy of the fitted run."""
    code, path = fitted
    assert code == 0
    return Path(shutil.copytree(path, tmp_path / "run"))


# -- fit, evaluate, sample, resume ---------------------------------------------------------


def test_fit_writes_the_run_directory(fitted):
    code, run = fitted
    assert code == 0
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "samples.png", "curves.png"} <= {
        p.name for p in run.iterdir()
    }
    assert _metrics_epochs(run) == [1, 2]
    config = RunDir.open(run).read_config()
    assert config["train"]["epochs"] == 2 and config["train"]["progress"] is False
    assert config["data"]["name"] == "digits"
    assert RunDir.open(run).load_checkpoint()["epoch"] == 2
    assert _is_png(run / "samples.png") and _is_png(run / "curves.png")


def test_evaluate_prints_and_saves_both_estimates(run, capsys):
    assert main(["evaluate", str(run), "--num-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "ELBO" in out and "log p(x)" in out and "K=20" in out
    result = json.loads((run / "evaluation.json").read_text())
    assert result["split"] == "test" and result["num_samples"] == 20
    assert result["num_points"] == 359  # 20% of the 1797 digits (data.num_train limits the training set only)
    # The trained model beats p = 1/2 for each of the 64 binary pixels, 64 log 2 = 44.36 nats per digit, which an
    # untrained decoder (logits near 0, plus a KL >= 0) cannot; measured (seed 0): ELBO -31.9, log p(x) -30.9.
    assert -64 * math.log(2) < result["elbo"] < 0
    assert -64 * math.log(2) < result["log_likelihood"] < 0
    # KL per dimension and active units, as compare's latent_usage gives them on the same points (seeded draws)
    assert "KL per dimension" in out and "active units" in out and result["usage_points"] == 359
    from ppl_vae.compare import latent_usage
    from ppl_vae.experiment import load_run

    exp = load_run(run, device="cpu")
    usage = latent_usage(exp.model, exp.guide, exp.data.x_test)
    assert result["active_units"] == usage["active_units"] and 0 < result["active_units"] <= exp.config.model.config.latent_dim
    assert result["kl_per_dim"] == pytest.approx(usage["kl_per_dim"], rel=0.05) and result["kl_per_dim"] > 0


def test_evaluate_another_split(run, capsys):
    assert main(["evaluate", str(run), "-k", "2", "--split", "val", "--max-points", "50"]) == 0
    result = json.loads((run / "evaluation_val.json").read_text())
    assert result["split"] == "val" and result["num_points"] == 50 and result["num_samples"] == 2
    assert not (run / "evaluation.json").exists()


def test_sample_writes_samples_and_reconstructions(run, capsys):
    (run / "samples.png").unlink()
    assert main(["sample", str(run), "-n", "16"]) == 0
    assert _is_png(run / "samples.png")
    assert _is_png(run / "reconstructions.png")
    out = capsys.readouterr().out
    assert str(run / "samples.png") in out and str(run / "reconstructions.png") in out


def test_resume_continues_to_more_epochs(run, capsys):
    code = main(["fit", "--resume", str(run), "--set", "train.epochs=3", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    assert _metrics_epochs(run) == [1, 2, 3]
    assert RunDir.open(run).load_checkpoint()["epoch"] == 3
    assert RunDir.open(run).read_config()["train"]["epochs"] == 3
    assert "done: 3 epochs" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: ppl-vae" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["sample", "--help"]])
def test_help_and_version_exit_cleanly(argv, capsys):
    # (a bad command line is one line and exit status 2: the table in test_bad_inputs.py)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "ppl-vae" in capsys.readouterr().out


@pytest.mark.slow  # end to end: a fresh interpreter imports the whole package (~3 s); in-process tests cover the rest
def test_installed_console_script_help():
    script = Path(sys.executable).with_name("ppl-vae")
    if not script.exists():
        found = shutil.which("ppl-vae")
        if found is None:
            pytest.skip("the ppl-vae console script is not installed")
        script = Path(found)
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ppl-vae")
    for command in ("fit", "evaluate", "sample"):
        assert command in proc.stdout


# Bad inputs (exit status 2, one line on stderr, no run changed) are the table in test_bad_inputs.py.
