"""Stacked autoencoders (ppl_vae.stacked): layer-wise stages in order, fine-tuning from their weights, resume."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import ppl_vae.stacked as stacked
from ppl_vae.cli import main
from ppl_vae.config import config_from_dict, config_to_dict
from ppl_vae.data import load_dataset
from ppl_vae.errors import ConfigError, FitInterrupted
from ppl_vae.experiment import build_experiment, fit_experiment, load_run, resume_experiment
from ppl_vae.inference.fit import Callback
from ppl_vae.inference.semisup import latent_codes
from ppl_vae.runs import RunDir
from ppl_vae.stacked import init_from_stages, stage_codes, train_stages

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _raw(epochs: int = 2) -> dict:
    raw = yaml.safe_load((CONFIGS / "stacked_ae_digits.yaml").read_text())
    raw["data"]["num_train"] = 64
    raw["stack"]["layers"] = [12, 6, 3]
    raw["stack"]["stages"] = [{"epochs": epochs, "corruption": {"kind": "masking", "rate": 0.2}}, {"epochs": epochs}, {"epochs": epochs}]
    raw["train"].update(epochs=epochs, batch_size=16, progress=False, device="cpu", val_every=1)
    return raw


class StopAfter(Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step(self, ctx, loss):
        self.steps -= 1
        if self.steps == 0:
            ctx.request_stop()


def test_a_stack_config_sets_the_deep_model_and_guide_and_round_trips():
    config = config_from_dict(_raw())
    assert config.model.name == "vae" and config.model.config.latent_dim == 3
    assert config.model.config.hidden_dims == (6, 12)  # the stages' decoders in reverse
    assert config.guide.config.hidden_dims == (12, 6) and config.guide.config.head == "delta"
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="derives model from stack.layers"):
        config_from_dict({**_raw(), "model": {"name": "vae"}})
    with pytest.raises(ConfigError, match="one item per layer"):
        config_from_dict({**_raw(), "stack": {"layers": [4, 2], "stages": [{}]}})
    with pytest.raises(ConfigError, match="stack.stage.head"):
        config_from_dict({**_raw(), "stack": {"layers": [4], "stage": {"head": "iaf:2"}}})


def test_the_stages_train_in_order_each_on_the_codes_of_the_one_before(tmp_path):
    config = config_from_dict(_raw())
    run = RunDir.create(tmp_path, "stack")
    data = load_dataset(config.data)
    stages = train_stages(config, data, run)
    assert [s.data.x_shape for s in stages] == [(64,), (12,), (6,)]
    assert torch.equal(stages[0].data.x_test, data.x_test)
    for before, after in zip(stages[:-1], stages[1:]):
        expected = stage_codes(before.guide, before.data)
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(after.data, f"x_{split}"), getattr(expected, f"x_{split}")), split
        assert 0 < after.data.x_train.min() and after.data.x_train.max() < 1  # sigmoid codes
    for k in range(3):
        assert len(RunDir(run.path / f"stage_{k + 1}").read_metrics()) == 2
    # inner stages: a Bernoulli on sigmoid codes; the code is squashed before the decoder but the last one's
    assert [s.model.config.likelihood for s in stages] == ["bernoulli"] * 3
    assert [s.model.config.code_activation for s in stages] == [True, True, False]


def test_the_deep_autoencoder_starts_from_the_stages_weights(tmp_path):
    config = config_from_dict(_raw())
    stages = train_stages(config, load_dataset(config.data), None)
    exp = build_experiment(config)
    init_from_stages(exp.model, exp.guide, stages)
    encoders = [exp.guide.trunk[0], exp.guide.trunk[2], exp.guide.heads["z"].linear]
    decoders = [exp.model.decoder[4], exp.model.decoder[2], exp.model.decoder[0]]
    for stage, enc, dec in zip(stages, encoders, decoders):
        assert torch.equal(enc.weight, stage.guide.heads["z"].linear.weight)
        assert torch.equal(enc.bias, stage.guide.heads["z"].linear.bias)
        assert torch.equal(dec.weight, stage.model.decoder[0].weight)
        assert torch.equal(dec.bias, stage.model.decoder[0].bias)
    # the deep encoder's code is the last stage's code of the stacked codes
    x = exp.data.x_test[:5]
    assert torch.allclose(latent_codes(exp.guide, x), latent_codes(stages[2].guide, stages[2].data.x_test[:5]), atol=1e-6)


def test_fit_experiment_fine_tunes_from_the_stages_weights(tmp_path, monkeypatch):
    seen = {}
    original = stacked.init_from_stages

    def spy(model, guide, stages):
        original(model, guide, stages)
        seen["guide"] = {k: v.clone() for k, v in guide.state_dict().items()}
        seen["stage1"] = stages[0].guide.heads["z"].linear.weight.clone()

    import ppl_vae.experiment as experiment

    monkeypatch.setattr(experiment, "init_from_stages", spy)
    run = RunDir.create(tmp_path, "stack")
    fit_experiment(config_from_dict(_raw(epochs=1)), run)
    assert torch.equal(seen["guide"]["trunk.0.weight"], seen["stage1"])
    stage1 = torch.load(run.path / "stage_1" / RunDir.CHECKPOINT, weights_only=False)["guide"]
    assert torch.equal(stage1["heads.z.linear.weight"], seen["stage1"])  # the trained stage 1, as saved
    assert not torch.equal(load_run(run, device="cpu").guide.trunk[0].weight, seen["stage1"])  # then fine-tuned


def _states(run: RunDir) -> dict:
    out = {}
    for name in ["", "stage_1", "stage_2", "stage_3"]:
        state = torch.load(run.path / name / RunDir.CHECKPOINT, weights_only=False)
        out[name or "fine-tuned"] = {**{f"model.{k}": v for k, v in state["model"].items()}, **{f"guide.{k}": v for k, v in state["guide"].items()}}
    return out


def test_an_interrupted_stacked_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    raw = _raw(epochs=2)
    whole = RunDir.create(tmp_path, "whole")
    fit_experiment(config_from_dict(raw), whole)

    real_fit = stacked.fit

    def fit_stopping_in_stage_2(*args, run_dir=None, callbacks=(), **kwargs):
        if run_dir is not None and run_dir.path.name == "stage_2":
            callbacks = [*callbacks, StopAfter(5)]  # inside stage 2's first epoch (4 steps per epoch)
        return real_fit(*args, run_dir=run_dir, callbacks=callbacks, **kwargs)

    run = RunDir.create(tmp_path, "broken")
    monkeypatch.setattr(stacked, "fit", fit_stopping_in_stage_2)
    with pytest.raises(FitInterrupted, match="interrupted in stage 2; resume with") as err:
        fit_experiment(config_from_dict(raw), run)
    assert err.value.run_dir == str(run.path)
    assert not (run.path / "stage_3").exists()
    monkeypatch.setattr(stacked, "fit", real_fit)
    with pytest.raises(FitInterrupted):
        resume_experiment(run, callbacks=[StopAfter(3)])  # stage 2 and 3 finish; fine-tuning stops at step 3
    assert len(RunDir(run.path / "stage_1").read_metrics()) == 2  # stage 1 was not trained again
    _, result = resume_experiment(run)
    assert result.epochs_done == 2
    expected, got = _states(whole), _states(run)
    for stage in expected:
        for key in expected[stage]:
            assert torch.equal(expected[stage][key], got[stage][key]), (stage, key)
    assert [r["train_loss"] for r in run.read_metrics()] == [r["train_loss"] for r in whole.read_metrics()]


def test_cli_show_fit_evaluate_sample_on_the_digits_config(tmp_path, capsys):
    sets = ["--set", "data.num_train=64", "--set", "train.epochs=1", "--set", "train.progress=false",
            "--set", "train.device=cpu", "--set", "stack.stages.0.epochs=1", "--set", "stack.stages.1.epochs=1",
            "--set", "stack.stages.2.epochs=1"]
    config = str(CONFIGS / "stacked_ae_digits.yaml")
    assert main(["show", config, *sets]) == 0
    assert "stacked autoencoder" in capsys.readouterr().out
    assert main(["fit", config, *sets, "--out-dir", str(tmp_path), "--name", "sae"]) == 0
    run = tmp_path / "sae"
    assert all((run / f"stage_{k}" / RunDir.CHECKPOINT).is_file() for k in (1, 2, 3))
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction BCE" in out and "reconstruction MSE" in out
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["reconstruction"]
    assert main(["sample", str(run)]) == 0
    assert load_run(run, device="cpu").model.config.latent_dim == 4
