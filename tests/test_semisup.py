"""Semi-supervised M2: label splits, mixed batches, the three parts of the objective, the three
ways to handle the unlabelled class, M1+M2, the figures, and the errors for bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyro
import pytest
import torch
import yaml
from pyro import poutine
from pyro.infer import config_enumerate

from ppl_vae import make_guide, make_model
from ppl_vae.config import config_from_dict, config_to_dict, load_config
from ppl_vae.data import Dataset
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.experiment import fit_experiment, load_run, resume_experiment
from ppl_vae.inference.estimators import estimator_config, make_estimator
from ppl_vae.inference.fit import Callback, fit
from ppl_vae.inference.semisup import (
    SemiSupervised_ELBO,
    classification_accuracy,
    kingma_aux_weight,
    unbiased_labelled_weight,
)
from ppl_vae.labelled import UNLABELLED, MixedBatches, balanced_label_indices, hide_labels, num_labelled
from ppl_vae.plots import analogy_images, class_grid_images
from ppl_vae.runs import RunDir
from ppl_vae.spec import GuideFactorSpec, GuideSpec, LatentSpec, ModelSpec, NetSpec, ObservedSpec

from .helpers import quick_train, tiny_digits, tiny_vae

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NUM_CLASSES = 10


def m2_spec(family: str = "categorical", z_dim: int = 4, hidden: int = 32) -> tuple[ModelSpec, GuideSpec]:
    net = NetSpec(hidden_dims=(hidden,), activation="softplus")
    model = ModelSpec(
        latents=(LatentSpec("y", family, dim=NUM_CLASSES, observed_when_given=True), LatentSpec("z", dim=z_dim)),
        observed=ObservedSpec(parents=("y", "z"), net=net),
    )
    guide = GuideSpec((GuideFactorSpec("y", family, ("x",), net), GuideFactorSpec("z", "normal", ("x", "y"), net)))
    return model, guide


def tiny_m2(family: str = "categorical", **kw):
    model_spec, guide_spec = m2_spec(family, **kw)
    model = make_model("spec", (64,), model_spec)
    return model, make_guide("spec", model, guide_spec)


def _semi(num_labels: int = 50, num_train: int = 400) -> Dataset:
    return hide_labels(tiny_digits(num_train), num_labels, seed=0)


# -- labelled / unlabelled split ------------------------------------------------------------------


def test_balanced_split_keeps_the_same_number_per_class_and_is_seeded():
    data = tiny_digits(600)
    semi = hide_labels(data, 100, seed=3)
    kept = semi.y_train[semi.y_train != UNLABELLED]
    assert num_labelled(semi.y_train) == 100
    assert torch.bincount(kept, minlength=10).tolist() == [10] * 10
    # The kept labels are the true ones; hidden ones are -1; validation and test keep all labels.
    known = semi.y_train != UNLABELLED
    assert torch.equal(semi.y_train[known], data.y_train[known])
    assert torch.equal(semi.y_val, data.y_val) and torch.equal(semi.y_test, data.y_test)
    assert torch.equal(hide_labels(data, 100, seed=3).y_train, semi.y_train)
    assert not torch.equal(hide_labels(data, 100, seed=4).y_train, semi.y_train)


def test_more_labels_than_points_is_refused():
    with pytest.raises(DataError, match="500 labels were requested but the training set has only 200 points"):
        hide_labels(tiny_digits(200), 500)


def test_a_class_with_no_labelled_point_is_refused():
    y = torch.arange(100) % 9  # class 9 never occurs
    with pytest.raises(DataError, match="class 9 has 0 training points.*no labelled point"):
        balanced_label_indices(y, 20, 10)


def test_labels_outside_the_range_are_refused():
    data = tiny_digits(200)
    bad = data.y_train.clone()
    bad[7] = 12
    with pytest.raises(DataError, match=r"must lie in 0..9, but rows \[7\] hold \[12\]"):
        hide_labels(replace(data, y_train=bad), 50)
    bad_test = data.y_test.clone()
    bad_test[0] = -3
    with pytest.raises(DataError, match="test labels must lie in 0..9"):
        hide_labels(replace(data, y_test=bad_test), 50)


def test_an_unbalanced_number_of_labels_and_unlabelled_data_are_refused():
    with pytest.raises(DataError, match="multiple of the 10 classes"):
        hide_labels(tiny_digits(200), 55)
    with pytest.raises(DataError, match="has no class labels"):
        hide_labels(replace(tiny_digits(200), y_train=None), 50)


# -- mixed batches --------------------------------------------------------------------------------


def test_mixed_batches_cycle_the_labels_and_pass_once_over_the_unlabelled_points():
    data = _semi(num_labels=20, num_train=300)
    batches = MixedBatches(data.x_train, data.y_train, batch_size=32, labelled_per_batch=4, seed=1)
    seen_unlabelled, seen_labelled = [], []
    for step, xb, yb in batches.epoch(0):
        assert xb.shape[0] == yb.shape[0]
        assert int((yb[:4] != UNLABELLED).sum()) == 4  # the labelled part comes first
        assert bool((yb[4:] == UNLABELLED).all())
        rows = [int(((data.x_train == row).all(1)).nonzero()[0]) for row in xb]
        seen_labelled += rows[:4]
        seen_unlabelled += rows[4:]
    unlabelled = (data.y_train == UNLABELLED).nonzero().flatten().tolist()
    assert sorted(seen_unlabelled) == sorted(unlabelled)  # each unlabelled point exactly once
    assert len(batches) == -(-len(unlabelled) // 28)
    assert set(seen_labelled) == set((data.y_train != UNLABELLED).nonzero().flatten().tolist())  # all labels cycled


def test_mixed_batches_resume_mid_epoch_exactly():
    data = _semi(num_labels=20, num_train=300)
    batches = MixedBatches(data.x_train, data.y_train, batch_size=32, labelled_per_batch=4, seed=2, binarize=True)
    full = list(batches.epoch(1))
    it = batches.epoch(1)
    for _ in range(3):
        next(it)
    state = batches.generator.get_state()
    rest = list(batches.epoch(1, 3, state))
    assert len(rest) == len(full) - 3
    for (s1, x1, y1), (s2, x2, y2) in zip(full[3:], rest):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_mixed_batches_check_their_arguments():
    data = _semi()
    with pytest.raises(ValueError, match="labelled_per_batch must be at least 1 and below the batch size 10"):
        MixedBatches(data.x_train, data.y_train, batch_size=10, labelled_per_batch=10)
    with pytest.raises(DataError, match="every training label is hidden"):
        MixedBatches(data.x_train, torch.full_like(data.y_train, UNLABELLED), batch_size=10, labelled_per_batch=2)


# -- the objective ------------------------------------------------------------------------------


def _grads(module) -> dict[str, bool]:
    """Which named parameters received a non-zero gradient."""
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def _classifier(name: str) -> bool:
    return name.startswith(("trunks.y.", "heads.y."))


@pytest.mark.parametrize("aux_weight", [0.0, 5.0])
def test_labelled_step_trains_the_model_and_z_encoder_and_the_classifier_only_through_the_aux_term(aux_weight):
    model, guide = tiny_m2()
    data = tiny_digits(40)
    elbo = SemiSupervised_ELBO(make_estimator("enum"), aux_weight=aux_weight)
    elbo.loss_and_grads(model, guide, data.x_train[:16].bernoulli(), data.y_train[:16])
    model_grads, guide_grads = _grads(model), _grads(guide)
    assert all(model_grads.values())  # decoder
    assert all(v for n, v in guide_grads.items() if not _classifier(n))  # q(z|x,y)
    classifier = [v for n, v in guide_grads.items() if _classifier(n)]
    assert classifier and all(classifier) == (aux_weight > 0) and any(classifier) == (aux_weight > 0)


def test_aux_term_alone_trains_only_the_classifier():
    model, guide = tiny_m2()
    data = tiny_digits(40)
    elbo = SemiSupervised_ELBO(make_estimator("enum"), aux_weight=1.0)
    x, y = data.x_train[:16].bernoulli(), data.y_train[:16]
    loss = elbo._aux_elbo.differentiable_loss(elbo._aux_model, elbo._no_guide, guide, x, y)
    loss.backward()
    assert not any(_grads(model).values())
    grads = _grads(guide)
    assert all(v for n, v in grads.items() if _classifier(n))
    assert not any(v for n, v in grads.items() if not _classifier(n))
    expected = -guide.label_dist(x).log_prob(y).sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.parametrize("estimator", ["enum", "tracegraph:nn"])
def test_unlabelled_step_trains_every_network_including_the_classifier(estimator):
    model, guide = tiny_m2()
    data = tiny_digits(40)
    elbo = SemiSupervised_ELBO(make_estimator(estimator), aux_weight=10.0)
    x = data.x_train[:16].bernoulli()
    y = torch.full((16,), UNLABELLED)
    elbo.base.prepare(model, guide, x, None) if hasattr(elbo.base, "prepare") else None
    elbo.loss_and_grads(model, guide, x, y)
    assert all(_grads(model).values())
    assert all(_grads(guide).values())  # the aux term has no labelled point to act on: this is U(x) alone


def test_enumerated_unlabelled_loss_equals_the_hand_computed_expectation_over_classes():
    r"""-U(x) = -sum_y q(y|x) [log p(x|y,z_y) + log p(y) + log p(z_y) - log q(z_y|x,y)] - H[q(y|x)],
    computed by hand with the very z_y the enumerated guide drew (same seed), to float precision."""
    model, guide = tiny_m2()
    x = tiny_digits(40).x_train[:6].bernoulli()
    elbo = make_estimator(estimator_config("enum"))
    pyro.set_rng_seed(11)
    loss = elbo.loss(model, guide, x, None)

    pyro.set_rng_seed(11)
    with torch.no_grad():
        trace = poutine.trace(poutine.enum(config_enumerate(guide, default="parallel"), first_available_dim=-2)).get_trace(x, None)
        z = trace.nodes["z"]["value"]  # (10, 6, z_dim): one draw per enumerated class
        classes = torch.arange(NUM_CLASSES).unsqueeze(-1)  # (10, 1)
        q_y = guide.label_dist(x)  # Categorical, batch (6,)
        log_q_y = q_y.logits.T  # (10, 6)
        values = {"y": classes, "z": z}
        log_joint = (
            model.latent_dist("y", values).log_prob(classes)  # (10, 1) -> broadcasts
            + model.latent_dist("z", values).log_prob(z)
            + model.x_dist(values).log_prob(x)
        )
        log_q_z = guide.latent_dist("z", {"x": x, "y": classes}).log_prob(z)
        per_class = log_joint - log_q_z  # (10, 6)
        entropy = -(log_q_y.exp() * log_q_y).sum(0)  # (6,)
        by_hand = -((log_q_y.exp() * per_class).sum(0) + entropy).sum()
    assert loss == pytest.approx(float(by_hand), rel=1e-5, abs=1e-4)


def test_kingma_aux_weight_and_the_unbiased_labelled_weight():
    assert kingma_aux_weight(50_000, 100) == pytest.approx(50.0)
    # 100 of 50,000 points are labelled, but 10 of every 100 in a batch: weigh them by 0.002 / 0.1.
    assert unbiased_labelled_weight(50_000, 100, 100, 10) == pytest.approx(0.02)


def test_labelled_weight_scales_the_labelled_terms_and_leaves_the_unlabelled_ones():
    model, guide = tiny_m2()
    x = tiny_digits(40).x_train[:12].bernoulli()
    y = tiny_digits(40).y_train[:12].clone()
    y[6:] = UNLABELLED

    def losses(weight):
        elbo = SemiSupervised_ELBO(make_estimator("enum"), aux_weight=3.0, labelled_weight=weight)
        pyro.set_rng_seed(5)
        both = elbo.loss(model, guide, x, y)
        pyro.set_rng_seed(5)
        labelled_only = elbo.loss(model, guide, x[:6], y[:6])
        return both, labelled_only

    both_1, lab_1 = losses(1.0)
    both_3, lab_3 = losses(0.25)
    assert lab_3 == pytest.approx(0.25 * lab_1, rel=1e-5)
    assert both_3 - lab_3 == pytest.approx(both_1 - lab_1, rel=1e-5)  # the unlabelled part is unchanged
    with pytest.raises(ValueError, match="labelled_weight must be a finite number > 0"):
        SemiSupervised_ELBO(make_estimator("enum"), aux_weight=1.0, labelled_weight=0.0)


# -- training ------------------------------------------------------------------------------------


# Slow: three epochs on all the digits per way. The default run trains each way for one epoch through
# examples/semi_supervised.py (tests/test_examples.py), and an M2 config through fit_experiment below.
@pytest.mark.slow
@pytest.mark.parametrize(
    "family, estimator",
    [("categorical", "enum"), ("categorical", "tracegraph:nn"), ("relaxed_categorical", "trace")],
    ids=["enumeration", "reinforce", "relaxation"],
)
def test_each_way_of_handling_the_unlabelled_class_trains(family, estimator):
    data = hide_labels(tiny_digits(None), 100, seed=0)
    model, guide = tiny_m2(family)
    elbo = SemiSupervised_ELBO(make_estimator(estimator), aux_weight=30.0)
    result = fit(model, guide, data, estimator=elbo, train=quick_train(epochs=3, batch_size=50), labelled_per_batch=10)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    accuracy = result.history[-1]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and "val_accuracy" in result.history[-1]
    # Chance is 0.1; 3 epochs on 100 labels of the 8x8 digits reach well above it (seed 0).
    assert accuracy > 0.35
    assert accuracy == pytest.approx(classification_accuracy(guide, data.x_test, data.y_test))


def test_fit_refuses_hidden_labels_with_a_plain_estimator_and_a_guide_without_classifier():
    data = _semi()
    model, guide = tiny_m2()
    with pytest.raises(ConfigError, match="estimator is not semi-supervised"):
        fit(model, guide, data, estimator="enum", train=quick_train(epochs=1))
    vae, vae_guide = tiny_vae()
    with pytest.raises(ConfigError, match="needs a guide with a classifier"):
        fit(vae, vae_guide, data, estimator=SemiSupervised_ELBO(make_estimator("trace"), 1.0), train=quick_train(epochs=1))


# -- configs, M1+M2, resume, figures ---------------------------------------------------------------


def _tiny_config(tmp_path, m1: bool = False, epochs: int = 2) -> dict:
    raw = yaml.safe_load((CONFIGS / ("m1m2_mnist_100.yaml" if m1 else "ssvae_mnist_100.yaml")).read_text())
    raw["data"] = {"name": "digits", "num_train": 400}
    raw["semi_supervised"]["num_labels"] = 50
    for section in [raw] + ([raw["m1"]] if m1 else []):
        section["train"] = {"epochs": epochs, "batch_size": 50, "progress": False, "device": "cpu"}
    for v in raw["model"]["latents"]:
        if v["name"] == "z":
            v["dim"] = 4
    raw["model"]["observed"]["net"]["hidden_dims"] = [32]
    for f in raw["guide"]["factors"]:
        f["net"]["hidden_dims"] = [32]
    if m1:
        raw["m1"]["model"].update(latent_dim=6, hidden_dims=[32])
        raw["m1"]["guide"].update(hidden_dims=[32])
    raw["eval"] = {"num_samples": 10}
    return raw


@pytest.mark.parametrize("stem", ["ssvae_mnist", "m1m2_mnist"])
def test_shipped_configs_differ_only_in_the_number_of_labels(stem):
    base = config_to_dict(load_config(CONFIGS / f"{stem}_100.yaml"))
    for n in (600, 1000, 3000):
        other = config_to_dict(load_config(CONFIGS / f"{stem}_{n}.yaml"))
        assert other["semi_supervised"]["num_labels"] == n
        other["semi_supervised"]["num_labels"] = 100
        assert other == base
    assert base["estimator"]["name"] == "enum"


def test_relaxed_config_differs_in_the_label_family_and_estimator_only():
    relaxed = config_to_dict(load_config(CONFIGS / "ssvae_mnist_100_relaxed.yaml"))
    enum = config_to_dict(load_config(CONFIGS / "ssvae_mnist_100.yaml"))
    assert relaxed["estimator"]["name"] == "trace"
    assert relaxed["model"]["latents"][0]["family"] == relaxed["guide"]["factors"][0]["head"] == "relaxed_categorical"
    for cfg in (relaxed, enum):
        cfg["estimator"] = None  # each estimator has its own options
        cfg["model"]["latents"][0]["family"] = cfg["guide"]["factors"][0]["head"] = None
        cfg["model"]["latents"][0]["temperature"] = None  # a relaxed family's option
    assert relaxed == enum


def test_m1_section_is_checked():
    with pytest.raises(ConfigError, match="m1.data: the M1 stage shares"):
        config_from_dict({"m1": {"data": {"name": "digits"}}})
    with pytest.raises(ConfigError, match="in section m1: unknown key train.epoch"):
        config_from_dict({"m1": {"train": {"epoch": 3}}})
    with pytest.raises(ConfigError, match="semi_supervised.num_labels must be a positive int"):
        config_from_dict({"semi_supervised": {"num_labels": 0}})


def test_semi_supervised_run_records_accuracy_and_writes_the_class_figures(tmp_path):
    config = config_from_dict(_tiny_config(tmp_path))
    run = RunDir.create(tmp_path, "m2")
    exp, result = fit_experiment(config, run)
    rows = run.read_metrics()
    assert len(rows) == 2 and all("test_accuracy" in r and "val_accuracy" in r for r in rows)
    assert num_labelled(exp.data.y_train) == 50

    loaded = load_run(run, device="cpu")
    grid = class_grid_images(loaded.model, loaded.data.x_shape, num_styles=3)
    assert grid.shape == (30, 64)
    rows3 = grid.reshape(3, 10, 64)
    assert not torch.allclose(rows3[:, 0], rows3[:, 1])  # the class changes the image
    assert not torch.allclose(rows3[0], rows3[1])  # and so does the style
    x, y = loaded.data.x_test[:4], loaded.data.y_test[:4]
    analogies = analogy_images(loaded.model, loaded.guide, x, y).reshape(4, 11, 64)
    assert torch.equal(analogies[:, 0], x)


def test_m1_m2_trains_both_stages_and_resumes_without_retraining_m1(tmp_path):
    config = config_from_dict(_tiny_config(tmp_path, m1=True))
    run = RunDir.create(tmp_path, "m1m2")

    class StopAfterFirstStep(Callback):
        def on_step(self, ctx, loss):
            ctx.request_stop()

    from ppl_vae.errors import FitInterrupted

    with pytest.raises(FitInterrupted):
        fit_experiment(config, run, callbacks=[StopAfterFirstStep()])  # stops in stage 2, after M1 finished
    m1_rows = RunDir(run.path / "m1").read_metrics()
    assert len(m1_rows) == 2
    exp, result = resume_experiment(run)
    assert len(RunDir(run.path / "m1").read_metrics()) == 2  # M1 was not trained again
    assert result.epochs_done == 2
    assert exp.data.x_train.shape[1] == 6  # M2 saw M1's 6-dim codes
    assert "test_accuracy" in run.read_metrics()[-1]
    assert load_run(run, device="cpu").data.x_test.shape == (exp.data.x_test.shape[0], 6)


def test_cli_evaluate_reports_the_classification_error_of_a_semi_supervised_run(tmp_path, capsys):
    import json

    from ppl_vae.cli import main

    config = config_from_dict(_tiny_config(tmp_path, epochs=1))
    run = RunDir.create(tmp_path, "m2")
    fit_experiment(config, run)
    assert main(["evaluate", str(run.path), "--num-samples", "5", "--device", "cpu"]) == 0
    assert "classification error" in capsys.readouterr().out
    saved = json.loads((run.path / "evaluation.json").read_text())
    loaded = load_run(run, device="cpu")
    assert saved["accuracy"] == pytest.approx(classification_accuracy(loaded.guide, loaded.data.x_test, loaded.data.y_test))


def test_an_m1_m2_config_cannot_be_built_without_its_trained_m1(tmp_path):
    from ppl_vae.experiment import build_experiment

    with pytest.raises(ConfigError, match="trains its M2 stage on the codes of a trained M1"):
        build_experiment(config_from_dict(_tiny_config(tmp_path, m1=True)))


def test_m1_codes_of_training_images_come_from_binary_images_as_the_test_codes_do():
    # With dynamic binarization the training images are grey levels and the test images one binary draw;
    # M2's classifier must see codes of binary images in both, or it is tested on another kind of input.
    import pyro.distributions as dist

    from ppl_vae.stages import m1_features

    def identity_guide(x, y=None):  # q(z|x) with mean x: the codes are the encoded images themselves
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    grey = torch.rand(40, 5) * 0.8 + 0.1
    data = Dataset("grey", grey, torch.bernoulli(grey[:10]), torch.bernoulli(grey[:10]), binarize="dynamic")
    codes = m1_features(identity_guide, data, data)
    for split in ("train", "val", "test"):
        x = getattr(codes, f"x_{split}")
        assert set(x.unique().tolist()) <= {0.0, 1.0}, split
    assert codes.binarize == "none"
    assert torch.equal(codes.train_noise, torch.ones(40, 5))  # M2 trains on draws from q(z1|x): its spread goes along
    plain = replace(data, binarize="none")  # grey levels throughout: used as they are
    assert torch.equal(m1_features(identity_guide, plain, plain).x_train, grey)


def test_an_interruption_in_the_m1_stage_says_to_resume_the_m1_m2_run(tmp_path, monkeypatch):
    import ppl_vae.experiment as experiment
    from ppl_vae.errors import FitInterrupted

    run = RunDir.create(tmp_path, "m1m2")

    def interrupted_fit(*args, run_dir=None, **kwargs):
        raise FitInterrupted(f"interrupted at epoch 1, step 3; resume with: ppl-vae fit --resume {run_dir.path}", str(run_dir.path))

    monkeypatch.setattr(experiment, "fit", interrupted_fit)
    with pytest.raises(FitInterrupted) as err:
        fit_experiment(config_from_dict(_tiny_config(tmp_path, m1=True)), run)
    assert err.value.run_dir == str(run.path)  # the M1+M2 run, not its m1/ stage folder
    assert str(err.value).endswith(f"--resume {run.path}") and "stage 1" in str(err.value)


def test_mixed_batches_add_fresh_noise_of_each_points_own_scale_and_resume_exactly():
    torch.manual_seed(0)
    x = torch.zeros(60, 3)
    y = torch.full((60,), UNLABELLED)
    y[:10] = torch.arange(10)
    noise = torch.zeros(60, 3)
    noise[30:] = 2.0  # half the points are noisy, the others not at all
    batches = MixedBatches(x, y, batch_size=12, labelled_per_batch=2, seed=5, noise=noise)
    first = list(batches.epoch(0))
    second = list(batches.epoch(1))
    seen = torch.cat([xb for _, xb, _ in first])
    quiet = torch.cat([xb[(yb >= 0) | (xb == 0).all(-1)] for _, xb, yb in first])
    assert (quiet == 0).all()
    noisy = seen[(seen != 0).any(-1)]
    assert len(noisy) == 30  # each unlabelled noisy point once per epoch
    assert 1.5 < noisy.std().item() < 2.5  # 90 draws of N(0, 2^2); fixed seed
    assert not torch.equal(first[0][1], second[0][1]) or not torch.equal(first[1][1], second[1][1])
    # resuming at step 2 with the generator state saved there gives the same batches
    it = batches.epoch(0)
    next(it), next(it)
    state = batches.generator.get_state()
    resumed = list(MixedBatches(x, y, batch_size=12, labelled_per_batch=2, seed=5, noise=noise).epoch(0, 2, state))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first[2:], resumed))


def test_train_noise_must_match_the_training_data():
    x = torch.rand(8, 3)
    with pytest.raises(DataError, match=r"train_noise must have the training data's shape \(8, 3\)"):
        Dataset("codes", x, x[:0], x[:0], train_noise=torch.ones(8, 2))


def test_learning_curves_of_a_semi_supervised_run_add_a_panel_of_classification_error(tmp_path):
    import matplotlib.pyplot as plt

    from ppl_vae.plots import plot_learning_curves

    rows = [
        {"epoch": e, "train_loss": 100.0 - e, "val_elbo": -90.0 + e, "val_accuracy": 0.7 + e / 100, "test_accuracy": 0.69 + e / 100}
        for e in (1, 2, 3)
    ]
    plain = [{k: v for k, v in r.items() if not k.endswith("accuracy")} for r in rows]
    wide = plt.imread(plot_learning_curves(rows, tmp_path / "semisup.png"))
    narrow = plt.imread(plot_learning_curves(plain, tmp_path / "plain.png"))
    assert wide.shape[0] == narrow.shape[0] and wide.shape[1] == 2 * narrow.shape[1]
