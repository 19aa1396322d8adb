"""The adversarial autoencoder: the objective, its second player and checkpoint, the MMD, shaped priors, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ppl_vae.cli import main
from ppl_vae.config import config_from_dict, config_to_dict, load_config
from ppl_vae.errors import ConfigError, FitInterrupted
from ppl_vae.experiment import (
    build_experiment,
    fit_experiment,
    resume_experiment,
    training_estimator,
)
from ppl_vae.families import PRIOR_SHAPES, shaped_prior
from ppl_vae.inference import adversarial as adv
from ppl_vae.inference.adversarial import (
    Adversarial_ELBO,
    AdversarialConfig,
    latent_match,
    mmd,
)
from ppl_vae.inference.checks import check_estimator
from ppl_vae.inference.distributed import World
from ppl_vae.inference.fit import fit
from ppl_vae.inference.training import TrainingState, instantiate
from ppl_vae.runs import RunDir

from .test_fit import StopAt, _params

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _raw(epochs: int = 3, weight: float = 1.0, prior: str = "mixture_circle", num_train: int = 120) -> dict:
    return {
        "data": {"name": "digits", "num_train": num_train, "binarize": "dynamic"},
        "model": {
            "name": "spec",
            "latents": [{"name": "z", "family": "normal", "dim": 2, "prior": prior}],
            "observed": {"likelihood": "bernoulli", "parents": ["z"], "net": {"hidden_dims": [32]}},
        },
        "guide": {"name": "spec", "factors": [{"name": "z", "head": "delta", "net": {"hidden_dims": [32]}}]},
        "adversarial": {"weight": weight, "disc_hidden_dims": [16], "disc_lr": 0.003},
        "optim": {"lr": 0.003},
        "train": {"epochs": epochs, "batch_size": 30, "progress": False, "device": "cpu", "val_every": 0},
    }


# -- the MMD ------------------------------------------------------------------------------------------


def test_mmd_is_about_zero_for_one_distribution_and_matches_the_closed_form_for_two():
    torch.manual_seed(0)
    a, b, shifted = torch.randn(600, 2), torch.randn(600, 2), torch.randn(600, 2) + torch.tensor([3.0, 0.0])
    # For N(0, I) against N(mu, I) in d = 2 with bandwidth h = 1, E k = (h^2 / (h^2 + 2)) exp(-|mu|^2 / (2 (h^2 + 2))),
    # so MMD^2 = 2 (1/3) (1 - exp(-9/6)) = 0.518. Tolerances: about five standard errors of the estimate at n = 600.
    assert abs(mmd(a, b)) < 0.01
    assert mmd(a, shifted) == pytest.approx(2 / 3 * (1 - math.exp(-1.5)), abs=0.03)
    with pytest.raises(ValueError, match="mmd needs two samples"):
        mmd(a[:1], b)


# -- shaped priors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRIOR_SHAPES))
def test_shaped_priors_sample_and_score_in_two_dimensions(name):
    prior = shaped_prior(name, torch.zeros(()))
    z = prior.sample((500,))
    assert z.shape == (500, 2) and prior.log_prob(z).shape == (500,)
    assert torch.isfinite(prior.log_prob(z)).all()
    # both shapes lie within a radius of about 4 of the origin, nothing near 8
    assert z.norm(dim=-1).max() < 6.5


def test_a_shaped_prior_needs_a_parentless_two_dimensional_normal_latent():
    raw = _raw()
    raw["model"]["latents"][0]["dim"] = 3
    with pytest.raises(ConfigError, match="prior .mixture_circle. is a fixed prior over a 2-D real latent"):
        config_from_dict(raw)


# -- the objective and its second player ---------------------------------------------------------------


def _prepared(config):
    exp = build_experiment(config)
    objective = training_estimator(config, exp.data)
    x = exp.data.x_train[:2]
    instantiate(exp.model, exp.guide, x, None)
    check_estimator(objective, exp.model, exp.guide, x)
    return exp, objective


def test_the_main_optimizer_leaves_the_discriminator_to_its_own():
    exp, objective = _prepared(config_from_dict(_raw()))
    state = TrainingState.create(exp.model, exp.guide, objective, config_from_dict(_raw()).optim, 1)
    disc = objective.trainable_module
    main_ids = {id(p) for p in state.params}
    disc_ids = {id(p) for p in disc.parameters()}
    assert disc_ids and not main_ids & disc_ids
    assert main_ids == {id(p) for m in (exp.model, exp.guide) for p in m.parameters()}
    assert {id(p) for g in disc.optimizer.param_groups for p in g["params"]} == disc_ids
    assert state.estimator_state is disc  # moved and checkpointed with the estimator's state


def test_a_step_trains_the_discriminator_and_reports_the_terms():
    exp, objective = _prepared(config_from_dict(_raw()))
    before = [p.detach().clone() for p in objective.trainable_module.parameters()]
    x = torch.bernoulli(exp.data.x_train[:30])  # the loop binarizes each batch
    loss = objective.loss_and_grads(exp.model, exp.guide, x, None)
    after = list(objective.trainable_module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is not None for p in exp.guide.parameters())
    terms = objective.last_terms
    assert set(terms) == {"reconstruction", "generator", "discriminator"}
    # unscaled, the loss is the batch's sum; the terms are per point
    assert loss == pytest.approx(x.shape[0] * (terms["reconstruction"] + terms["generator"]), rel=1e-5)


def test_the_discriminator_gets_no_gradient_from_the_encoders_loss():
    exp, objective = _prepared(config_from_dict(_raw()))
    disc = objective.trainable_module
    for p in disc.parameters():
        p.grad = None
    objective.differentiable_loss(exp.model, exp.guide, torch.bernoulli(exp.data.x_train[:30]), None).backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())


def _mmd_before_and_after(weight: float, seed: int = 0) -> tuple[float, float]:
    """The MMD^2 between 300 test codes and as many prior draws, before and after 40 epochs on 300 digits."""
    raw = _raw(epochs=40, weight=weight, num_train=300)
    raw["train"]["seed"], raw["adversarial"]["disc_hidden_dims"] = seed, [32, 32]
    config = config_from_dict(raw)
    exp = build_experiment(config)
    x = exp.data.x_test[:300]
    start = latent_match(exp.model, exp.guide, x).mmd
    fit(exp.model, exp.guide, exp.data, estimator=training_estimator(config, exp.data), optim=config.optim, train=config.train)
    return start, latent_match(exp.model, exp.guide, x).mmd


def test_training_moves_q_towards_the_prior():
    # Seed 0. Measured: the untrained encoder's MMD^2 is 1.07 (codes near 0, the prior on a circle of radius 4),
    # after training 0.035 (seeds 1 and 2: 0.069, 0.060). Tolerance: below a tenth of the start.
    start, trained = _mmd_before_and_after(1.0)
    assert start > 0.8
    assert trained < start / 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_adversary_beats_reconstruction_alone(seed):
    # The control is the same fit with weight 0: the codes then spread by reconstruction alone. Measured
    # (seeds 0, 1, 2): 0.035, 0.069, 0.060 with the adversary against 0.096, 0.098, 0.103 without.
    _, trained = _mmd_before_and_after(1.0, seed)
    _, control = _mmd_before_and_after(0.0, seed)
    assert trained < 0.8 * control


# -- checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [(1, 2), (0, 3)], ids=["mid-epoch-1", "mid-epoch-0"])
def test_interrupted_and_resumed_adversarial_fit_equals_uninterrupted_fit(tmp_path, stop):
    config = config_from_dict(_raw(epochs=3))
    full_run = RunDir.create(tmp_path, "full")
    full, _ = fit_experiment(config, full_run)

    run = RunDir.create(tmp_path, "cut")
    with pytest.raises(FitInterrupted):
        fit_experiment(config, run, callbacks=[StopAt(*stop)])
    resumed, result = resume_experiment(run)
    assert result.epochs_done == 3
    for a, b in zip(_params(full.model, full.guide), _params(resumed.model, resumed.guide)):
        assert torch.equal(a, b)
    saved_full, saved_cut = full_run.load_checkpoint()["estimator"], run.load_checkpoint()["estimator"]
    assert saved_full.keys() == saved_cut.keys() and "_extra_state" in saved_full
    for key in saved_full:
        if key != "_extra_state":
            assert torch.equal(saved_full[key], saved_cut[key]), key
    opt_full, opt_cut = saved_full["_extra_state"]["optimizer"], saved_cut["_extra_state"]["optimizer"]
    assert opt_full["state"].keys() == opt_cut["state"].keys() and opt_full["state"]
    for index, slots in opt_full["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, opt_cut["state"][index][name]), (index, name)
    full_metrics, cut_metrics = full_run.read_metrics(), run.read_metrics()
    for row_full, row_cut in zip(full_metrics, cut_metrics, strict=True):
        for key in ("train_loss", "term_reconstruction", "term_generator", "term_discriminator"):
            assert row_cut[key] == pytest.approx(row_full[key], rel=1e-9), key


# -- config ----------------------------------------------------------------------------------------------


def test_the_section_round_trips_and_is_absent_when_off():
    config = config_from_dict(_raw())
    assert config.adversarial == AdversarialConfig(1.0, (16,), 0.003, 1)
    assert config_from_dict(config_to_dict(config)) == config
    plain = config_from_dict({k: v for k, v in _raw().items() if k != "adversarial"})
    assert plain.adversarial is None and "adversarial" not in config_to_dict(plain)
    assert config_from_dict({**_raw(), "adversarial": None}).adversarial == AdversarialConfig()


@pytest.mark.parametrize(
    "section, value, message",
    [
        ("adversarial", {"disc_steps": 0}, "adversarial.disc_steps"),
        ("adversarial", {"weight": -1}, "adversarial.weight"),
        ("kl_weighting", {"beta": 2}, "takes no kl_weighting section"),
    ],
)
def test_bad_adversarial_configs_are_refused_with_one_line(section, value, message):
    raw = {**_raw(), section: value}
    with pytest.raises(ConfigError, match=message):
        training_estimator(config_from_dict(raw))


def test_torchrun_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(adv, "current_world", lambda: World(0, 2, 0))
    config = config_from_dict(_raw())
    exp = build_experiment(config)
    with pytest.raises(ConfigError, match="runs in one process only for now"):
        Adversarial_ELBO(config.adversarial).prepare(exp.model, exp.guide, exp.data.x_train[:2])


# -- the command line ----------------------------------------------------------------------------------


def test_show_fit_evaluate_sample_through_the_cli(tmp_path, capsys):
    config = str(CONFIGS / "aae_digits.yaml")
    assert load_config(config).adversarial is not None
    assert main(["show", config, "--graph", str(tmp_path / "graph.png")]) == 0
    assert "objective: adversarial autoencoder" in capsys.readouterr().out
    assert main(["fit", config, "--set", "train.epochs=1", "--set", "train.progress=false", "--out-dir", str(tmp_path),
                 "--name", "aae"]) == 0
    run = tmp_path / "aae"
    assert (run / "latent_vs_prior.png").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"term_reconstruction", "term_generator", "term_discriminator"} <= set(metrics[-1])
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "reporting reconstruction and MMD" in out and "MMD^2" in out and "log p(x) (importance)" not in out
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["mmd"] < 2 and saved["reconstruction"] > 0
    assert main(["sample", str(run), "-n", "16"]) == 0
    assert (run / "samples.png").is_file()


def test_pyros_svi_trains_with_the_objective_and_leaves_the_discriminator_to_it():
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI

    from ppl_vae.contract import DATA_PLATE

    decoder, encoder = torch.nn.Linear(2, 6), torch.nn.Linear(6, 2)

    def model(x, y=None):
        pyro.module("decoder", decoder)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", shaped_prior("swiss_roll", x))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x, y=None):
        pyro.module("encoder", encoder)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 0.1).to_event(1))  # a Gaussian encoder

    objective = Adversarial_ELBO(AdversarialConfig(disc_hidden_dims=(8,)))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=objective)
    x = torch.randn(20, 6)
    before = encoder.weight.detach().clone()
    svi.step(x)
    assert objective.trainable_module is not None and objective.trainable_module.optimizer.state  # built and stepped
    assert not torch.equal(before, encoder.weight)
    assert not any(p is q for p in pyro.get_param_store().values() for q in objective.trainable_module.parameters())


@pytest.mark.parametrize("kind", ["estimators", "guides"])
def test_compare_refuses_an_adversarial_config_with_one_line(tmp_path, kind):
    from ppl_vae.compare import compare_estimators, compare_guides

    run = compare_estimators if kind == "estimators" else compare_guides
    with pytest.raises(ConfigError, match=f"compare-{kind} compares bounds, but this config's adversarial: section"):
        run(config_from_dict(_raw()), ["trace"], tmp_path)
