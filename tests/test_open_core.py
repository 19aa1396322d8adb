"""The open core: Pyro models and guides written by hand (functions or modules, any sites) in every tool.

The models are in tests/user_models.py: Pyro's tutorial VAE as two plain functions (data site "obs",
no labels in the signature), a Gaussian-mixture VAE whose mixture is made of bare ``pyro.param`` s,
created on the first call, and a module with two latent sites with a guide that does not broadcast
over particles.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import yaml
from pyro.nn import PyroModule, PyroParam

import ppl_vae
from ppl_vae import ConfigError, DataConfig, EvalConfig, RunDir, TrainConfig, evaluate, fit, load_dataset
from ppl_vae.cli import main
from ppl_vae.config import config_from_dict, load_config
from ppl_vae.contract import ParticleLoopWarning
from ppl_vae.experiment import fit_experiment, load_run
from ppl_vae.plots import reconstruct_images, sample_images
from ppl_vae.programs import FunctionProgram, as_module

from . import user_models
from .user_models import ChainGuide, TwoLatentVAE, gmm_guide, gmm_vae, tutorial_guide, tutorial_model

TRAIN = dict(epochs=2, batch_size=50, progress=False, device="cpu", val_every=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", num_train=100))


def _tensors(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- functions ----------------------------------------------------------------------------------------


def test_function_model_and_guide_train_evaluate_sample_and_reopen(tmp_path, digits):
    before = {k: v.clone() for k, v in user_models.decoder.state_dict().items()}
    run = tmp_path / "not" / "yet" / "there"
    result = fit(tutorial_model, tutorial_guide, digits, train=TrainConfig(**TRAIN), run_dir=run)
    assert isinstance(result.model, FunctionProgram) and isinstance(result.guide, FunctionProgram)
    # the networks registered with pyro.module are trained in place, and owned by the program that created them
    assert all(not torch.equal(before[k], v) for k, v in user_models.decoder.state_dict().items())
    assert {n.split("$$$")[0] for n in result.model.param_names()} == {"decoder"}
    assert {n.split("$$$")[0] for n in result.guide.param_names()} == {"encoder"}
    trained = _tensors(result.model)
    x = digits.x_test[:20]
    ev = evaluate(tutorial_model, tutorial_guide, x, config=EvalConfig(num_samples=20))
    assert math.isfinite(ev.log_likelihood) and _tensors(result.model).keys() == trained.keys()
    assert all(torch.equal(v, _tensors(result.model)[k]) for k, v in trained.items()), "evaluation changes nothing"
    images = sample_images(tutorial_model, 6, digits.x_shape, seed=0)
    assert images.shape == (6, 64) and bool(((images >= 0) & (images <= 1)).all())
    # the run directory was created, with a config the CLI can reopen
    assert (run / "config.yaml").is_file() and (run / "checkpoint.pt").is_file()
    raw = yaml.safe_load((run / "config.yaml").read_text())
    assert raw["model"]["name"] == "python" and raw["model"]["target"].endswith("examples/pyro_functions.py:model")
    loaded = load_run(run, device="cpu")
    pyro.set_rng_seed(3)
    mine = reconstruct_images(tutorial_model, tutorial_guide, x)
    pyro.set_rng_seed(3)
    theirs = reconstruct_images(loaded.model, loaded.guide, x)
    assert torch.equal(mine, theirs)


def test_a_python_run_opens_in_every_cli_command(tmp_path, digits, capsys):
    run = tmp_path / "run"
    fit(tutorial_model, tutorial_guide, digits, train=TrainConfig(**TRAIN), run_dir=run)
    assert main(["evaluate", str(run), "-k", "5"]) == 0
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert main(["fit", "--resume", str(run), "--set", "train.epochs=3", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "log p(x) (importance)" in out and (run / "samples.png").is_file() and "done: 3 epochs" in out
    assert [row["epoch"] for row in RunDir(run).read_metrics()] == [1, 2, 3]


@pytest.mark.filterwarnings("ignore::ppl_vae.inference.record.NotReopenableWarning")  # factory-made functions
def test_bare_params_of_a_function_are_trained_checkpointed_and_resumed_bit_for_bit(tmp_path, digits):
    def run(epochs, name, resume=False):
        pyro.set_rng_seed(5)
        model, guide = gmm_vae(num_components=3), gmm_guide(num_components=3)
        fit(model, guide, digits, estimator="enum", train=TrainConfig(**{**TRAIN, "epochs": epochs}),
            run_dir=tmp_path / name, resume=resume)
        return as_module(model), as_module(guide)

    full_model, full_guide = run(2, "full")
    names = full_model.param_names()
    assert {"weights", "locs", "scales"} <= set(names)  # bare pyro.params, created lazily on the first call
    weights = pyro.get_param_store()  # nothing leaks into the global store
    assert "weights" not in weights.keys()
    run(1, "cut")
    cut_model, cut_guide = run(2, "cut", resume=True)
    for mine, theirs in ((full_model, cut_model), (full_guide, cut_guide)):
        a, b = _tensors(mine), _tensors(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the simplex-constrained weights moved away from their uniform start, and stay on the simplex
    with pyro.get_param_store().scope(full_model.scope.state):
        w = pyro.param("weights").detach()
    assert not torch.allclose(w, torch.full_like(w, 1 / 3)) and float(w.sum()) == pytest.approx(1.0, abs=1e-5)


class ModuleWithBareParam(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 64)

    def forward(self, x, y=None):
        tau = pyro.param("tau", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), tau).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


def test_a_module_that_keeps_a_bare_pyro_param_outside_itself_is_refused(digits):
    model = ModuleWithBareParam()
    guide = ppl_vae.make_guide("amortized", model, x_shape=(64,))
    with pytest.raises(ConfigError, match=r"registers \['tau'\] with pyro.param outside its own parameters"):
        fit(model, guide, digits, train=TrainConfig(**TRAIN))

    class Fixed(ModuleWithBareParam):  # the same parameter declared the PyroModule way trains
        def __init__(self) -> None:
            super().__init__()
            self.tau = PyroParam(torch.ones(()), constraint=dist.constraints.positive)

        def forward(self, x, y=None):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), self.tau).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)

    fixed = Fixed()
    fit(fixed, ppl_vae.make_guide("amortized", fixed, x_shape=(64,)), digits, train=TrainConfig(**TRAIN))
    assert float(fixed.tau.detach()) != 1.0


# -- any sites ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["trace", "meanfield", "iwae:3", "tracegraph"])
def test_registry_guide_covers_a_model_with_two_latent_sites(estimator, digits):
    model = TwoLatentVAE()
    guide = ppl_vae.make_guide("amortized", model, x_shape=(64,), seed=0)
    assert [s.name for s in guide.sites] == ["z1", "z2"] and [s.dim for s in guide.sites] == [2, 3]
    result = fit(model, guide, digits, estimator=estimator, train=TrainConfig(**TRAIN))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] + 1.0
    assert math.isfinite(evaluate(model, guide, digits.x_test[:10], config=EvalConfig(num_samples=5)).log_likelihood)


def test_a_guide_that_does_not_broadcast_is_evaluated_one_particle_at_a_time(digits):
    model, guide = TwoLatentVAE(), ChainGuide()
    x = digits.fixed_train_x(30)
    with pytest.warns(ParticleLoopWarning, match="Tensors must have same number of dimensions") as caught:
        first = evaluate(model, guide, x, config=EvalConfig(num_samples=200, seed=1))
        evaluate(model, guide, x, config=EvalConfig(num_samples=20, seed=2))
    assert len([w for w in caught if w.category is ParticleLoopWarning]) == 1  # said once per pair

    class Broadcasting(ChainGuide):  # the same guide, written to broadcast: h expanded to z1's batch shape
        def forward(self, x, y=None):
            h = self.body(x)
            with pyro.plate("data", x.shape[0]):
                loc1, raw1 = self.head1(h).chunk(2, -1)
                z1 = pyro.sample("z1", dist.Normal(loc1, torch.nn.functional.softplus(raw1) + 1e-4).to_event(1))
                hz = torch.cat([h.expand(*z1.shape[:-1], h.shape[-1]), z1], -1)
                loc2, raw2 = self.head2(hz).chunk(2, -1)
                pyro.sample("z2", dist.Normal(loc2, torch.nn.functional.softplus(raw2) + 1e-4).to_event(1))

    twin = Broadcasting()
    twin.load_state_dict(guide.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParticleLoopWarning)
        second = evaluate(model, twin, x, config=EvalConfig(num_samples=200, seed=1))
    # Different draws of the same estimator: equal within 4 standard errors of their difference.
    se = math.hypot(first.log_likelihood_stderr, second.log_likelihood_stderr)
    assert abs(first.log_likelihood - second.log_likelihood) < 4 * se


def test_a_guide_that_does_not_broadcast_trains_with_several_particles(digits):
    model, guide = TwoLatentVAE(), ChainGuide()
    with pytest.warns(ParticleLoopWarning):
        result = fit(model, guide, digits, estimator="trace:4", train=TrainConfig(**TRAIN))
    assert math.isfinite(result.final_loss)


# -- configs and the command line ---------------------------------------------------------------------


TUTORIAL = {
    "data": {"name": "digits", "num_train": 100},
    "model": {"name": "python", "target": "tests.user_models:tutorial_model"},
    "guide": {"name": "python", "target": "tests.user_models:tutorial_guide"},
    "train": {"epochs": 1, "batch_size": 50, "progress": False, "device": "cpu"},
    "eval": {"num_samples": 5},
}
GMM = {
    **TUTORIAL,
    "model": {"name": "python", "target": "tests.user_models:gmm_vae", "factory": True, "args": {"num_components": 3}},
    "guide": {"name": "python", "target": "tests.user_models:gmm_guide", "factory": True, "args": {"num_components": 3}},
    "estimator": {"name": "enum"},
}


def _write(tmp_path, raw, name="config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_every_command_works_with_a_config_that_names_functions(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, TUTORIAL)
    assert main(["show", config]) == 0
    assert main(["fit", config, "--name", "tut"]) == 0
    assert main(["evaluate", "runs/tut", "-k", "5"]) == 0
    assert main(["sample", "runs/tut", "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "obs" in out and "Estimators (what fit would accept)" in out and "log p(x) (importance)" in out
    assert (tmp_path / "runs" / "tut" / "reconstructions.png").is_file()


@pytest.mark.slow
def test_comparisons_with_a_hand_written_gaussian_mixture_vae(tmp_path, capsys):
    config = _write(tmp_path, GMM)
    assert main(["compare-estimators", config, "--estimators", "enum,tracegraph,trace", "--out", str(tmp_path / "e"),
                 "-k", "5", "--eval-points", "10", "--grad-draws", "3"]) == 0
    rows = {r["variant"]: r for r in (yaml.safe_load((tmp_path / "e" / name / "variant.json").read_text())["row"]
                                      for name in ("enum", "tracegraph", "trace"))}
    assert math.isfinite(rows["enum"]["test_log_px"]) and math.isfinite(rows["tracegraph"]["encoder_grad_var"])
    assert "discrete guide site 'c'" in rows["trace"]["refused"]  # refused by name, the others still ran
    assert main(["compare-guides", config, "--heads", "normal,fullcov", "--out", str(tmp_path / "g"),
                 "-k", "25", "--eval-points", "10"]) == 0
    table = (tmp_path / "g" / "comparison.md").read_text()
    assert "| normal |" in table and "| fullcov |" in table and "active_units" in table


def test_a_python_guide_is_a_variant_of_a_comparison(tmp_path):
    from ppl_vae.compare import CompareConfig, compare_guides

    config = config_from_dict({**TUTORIAL, "guide": {"name": "amortized", "hidden_dims": [16]}})
    rows, _ = compare_guides(config, ["normal", "tests.user_models:tutorial_guide"], tmp_path, CompareConfig(10, 25, 3))
    assert [r["variant"] for r in rows] == ["normal", "tests.user_models:tutorial_guide"]
    assert all(math.isfinite(r["test_log_px"]) for r in rows)


@pytest.mark.parametrize(
    "model, expected",
    [
        ({"name": "python", "target": "no_such_module:model"}, "model target 'no_such_module:model': cannot import"),
        ({"name": "python", "target": "tests.user_models:nothing"}, "has no attribute 'nothing'"),
        ({"name": "python", "target": "tests.user_models:X_DIM"}, "is not callable (a int)"),
        ({"name": "python", "target": "tests.user_models"}, "must be 'module:name'"),
        ({"name": "python", "target": "tests/nope.py:model"}, "the file 'tests/nope.py' does not exist"),
        ({"name": "python", "target": "tests.user_models:TwoLatentVAE", "args": {"colour": 1}}, "cannot be built with args ['colour']"),
        ({"name": "python", "target": "tests.user_models:tutorial_model", "factory": True}, "cannot be built with args []"),
        ({"name": "python", "target": "tests.user_models:not_a_factory", "factory": True}, "returned a int"),
        ({"name": "python", "target": "tests.user_models:broken_model"}, "the model failed on a batch of 2 points"),
    ],
)
def test_a_bad_target_gets_one_line_naming_it(tmp_path, capsys, model, expected):
    config = _write(tmp_path, {**TUTORIAL, "model": model, "guide": {"name": "amortized"}})
    assert main(["fit", config, "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a refused fit leaves no run"


# -- reproducibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [GMM, {**TUTORIAL, "model": {"name": "spec"}, "guide": None}], ids=["functions", "spec"])
def test_the_seed_covers_initialisation_building_and_fitting_twice_gives_the_same_parameters(raw):
    raw = {k: v for k, v in raw.items() if v is not None}
    config = config_from_dict(raw)
    first, _ = fit_experiment(config)
    torch.rand(5)  # the global random state moves in between
    second, _ = fit_experiment(config)
    for a, b in ((first.model, second.model), (first.guide, second.guide)):
        ta, tb = _tensors(a), _tensors(b)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_compile_and_make_are_seeded():
    from ppl_vae.compile import compile_spec
    from ppl_vae.models.presets import SPECS

    a = compile_spec(SPECS["vae"].model, SPECS["vae"].guide, (64,), seed=4)
    b = compile_spec(SPECS["vae"].model, SPECS["vae"].guide, (64,), seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.guide.parameters(), b.guide.parameters()))
    state = torch.random.get_rng_state()
    ppl_vae.make_model("vae", (64,), seed=1)
    assert torch.equal(state, torch.random.get_rng_state()), "a seeded build leaves the global generator alone"


# -- edge cases a correctness audit found -------------------------------------------------------------


def _enumerated_in_the_model(estimator: str) -> dict:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "specs" / "categorical_vae.yaml").read_text())
    raw["model"]["latents"][0].update(enumerate=True, prior="learned")
    raw["guide"]["factors"] = [{"name": "z", "conditions_on": ["x"], "net": {"hidden_dims": [16]}}]
    raw.update(data={"name": "digits", "num_train": 60}, estimator={"name": estimator},
               train={"epochs": 1, "batch_size": 30, "progress": False})
    return raw


@pytest.mark.parametrize("estimator", ["trace", "iwae", "tracegraph", "meanfield", "renyi", "jit_trace"])
def test_a_site_enumerated_in_the_model_is_refused_by_every_estimator_but_enum(estimator):
    with pytest.raises(ConfigError, match=r"the model enumerates site 'c'.*Use enum"):
        fit_experiment(config_from_dict(_enumerated_in_the_model(estimator)))


def test_enum_sums_out_a_site_enumerated_in_the_model_and_trains_its_learned_prior():
    exp, result = fit_experiment(config_from_dict(_enumerated_in_the_model("enum")))
    prior = exp.model.prior_params["c"]
    assert math.isfinite(result.final_loss) and not torch.equal(prior, torch.zeros_like(prior))


def test_a_guide_site_marked_for_enumeration_is_refused_without_enum():
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "specs" / "categorical_vae.yaml").read_text())
    raw["guide"]["factors"][0]["enumerate"] = True
    raw.update(data={"name": "digits", "num_train": 60}, estimator={"name": "tracegraph"},
               train={"epochs": 1, "batch_size": 30, "progress": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before Pyro could warn at every step
        with pytest.raises(ConfigError, match="guide site 'c' is marked for enumeration"):
            fit_experiment(config_from_dict(raw))


def test_bernoulli_on_grey_levels_names_the_key_that_works_for_the_model(tmp_path):
    base = {"data": {"name": "digits", "binarize": "none", "num_train": 50}, "train": {"epochs": 1, "progress": False}}
    for model, key in (({"name": "vae"}, "model.allow_nonbinary"), ({"name": "spec"}, "model.observed.allow_nonbinary")):
        with pytest.raises(ppl_vae.DataError, match=key):
            fit_experiment(config_from_dict({**base, "model": model}))
        config = load_config(_write(tmp_path, {**base, "model": model}), [f"{key}=true"])
        fit_experiment(config)  # and the key it names is accepted


def test_show_reports_what_fit_would_refuse(capsys):
    assert main(["show", str(Path(__file__).resolve().parents[1] / "configs" / "specs" / "categorical_vae.yaml")]) == 0
    out = capsys.readouterr().out
    assert "meanfield       refused: estimator meanfield needs every guide site reparameterized" in out
    assert " *enum            ok" in out


def test_a_refused_fit_leaves_no_run_directory(tmp_path, capsys):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "specs" / "categorical_vae.yaml")
    code = main(["fit", config, "--out-dir", str(tmp_path), "--set", "estimator.name=meanfield",
                 "--set", "data.num_train=50"])
    assert code == 2 and "guide site 'c'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_hand_built_estimator_is_recorded_and_its_run_evaluates_but_does_not_resume_from_the_cli(tmp_path, digits, capsys):
    model, guide = TwoLatentVAE(), ppl_vae.make_guide("amortized", TwoLatentVAE(), x_shape=(64,))
    fit(model, guide, digits, estimator=pyro.infer.Trace_ELBO(), train=TrainConfig(**TRAIN), run_dir=tmp_path / "r")
    raw = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert raw["run"]["hand_built_estimator"] == "Trace_ELBO" and raw["model"]["args"] == model.init_args
    assert main(["evaluate", str(tmp_path / "r"), "-k", "3"]) == 0
    assert main(["fit", "--resume", str(tmp_path / "r")]) == 2
    assert "resume it from Python" in capsys.readouterr().err


def test_a_run_trained_on_a_tensor_says_the_cli_cannot_reload_it(tmp_path, digits):
    model, guide = TwoLatentVAE(), ChainGuide()
    fit(model, guide, digits.fixed_train_x(), train=TrainConfig(**TRAIN), run_dir=tmp_path / "r")
    with pytest.raises(ppl_vae.RunDirError, match="trained from Python on data passed as a tensor"):
        load_run(tmp_path / "r")
    loaded = load_run(tmp_path / "r", data=digits.fixed_train_x(), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(loaded.guide.parameters(), guide.parameters()))


# -- the page that documents all of this --------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "fit": ["--set", "train.epochs=1", "--set", "data.num_train=100", "--no-figures"],
    "evaluate": ["-k", "5", "--max-points", "20"],
    "sample": [],
    "show": [],
    "compare-estimators": ["--set", "train.epochs=1", "--set", "data.num_train=100", "-k", "5", "--eval-points", "10",
                           "--grad-draws", "3"],
    "compare-guides": ["--set", "train.epochs=1", "--set", "data.num_train=100", "-k", "25", "--eval-points", "10"],
}


def _doc_commands(name: str) -> list[list[str]]:
    import re
    import shlex

    text = (ROOT / "docs" / name).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("ppl-vae ")]


@pytest.mark.slow
def test_bring_your_own_model_commands_run_as_written(tmp_path, monkeypatch, capsys):
    # The page's commands, in order, from a folder that holds the repository's examples and configs,
    # with short budgets added.
    for folder in ("examples", "configs"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    commands = _doc_commands("bring_your_own_model.md")
    assert [c[0] for c in commands] == ["show", "fit", "evaluate", "sample", "compare-estimators", "compare-guides"]
    for i, args in enumerate(commands):
        extra = FAST[args[0]] + (["--out", f"compare-{i}"] if args[0].startswith("compare") else [])
        assert main(args + extra) == 0, args
    out = capsys.readouterr().out
    assert "obs" in out and "| examples/pyro_functions.py:guide |" in out and "| iwae:5 |" in out


@pytest.mark.parametrize(
    "latents, expected",
    [
        ([{"name": "u", "dim": 2}, {"name": "z", "parents": ["u"], "prior": "learned"}],
         "latent 'z': prior: learned applies to a latent without parents"),
        ([{"name": "z", "family": "normal", "temperature": 0.3}], "latent 'z': temperature applies to relaxed_categorical"),
        ([{"name": "z", "family": "categorical", "dim": 1}], "latent 'z': a categorical latent needs dim >= 2"),
        ([{"name": "z"}, {"name": "w"}], "latent 'w' is a parent of nothing"),
    ],
)
def test_spec_fields_that_would_be_ignored_are_errors_naming_the_variable(latents, expected):
    raw = {"model": {"name": "spec", "latents": latents}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert expected in str(info.value)


@pytest.mark.parametrize("name", [n for n in ppl_vae.ESTIMATORS if n.startswith("jit_")])
def test_jit_estimators_refuse_functions_naming_their_twin(name, digits):
    with pytest.raises(ConfigError, match=f"Use {name.removeprefix('jit_')}, or write the model and guide as PyroModules"):
        fit(gmm_vae(), gmm_guide(), digits, estimator=name, train=TrainConfig(**TRAIN))


# -- the three hand-written models through every tool ---------------------------------------------------

THREE = {
    "tutorial_functions": (TUTORIAL["model"], TUTORIAL["guide"], "trace,iwae:3", "normal,iaf:2"),
    "two_site_module": ({"name": "python", "target": "tests.user_models:TwoLatentVAE"},
                        {"name": "python", "target": "tests.user_models:ChainGuide"}, "trace:2,iwae:3", "normal,fullcov"),
    "gaussian_mixture": (GMM["model"], GMM["guide"], "enum,tracegraph:avg", "normal,planar:2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(THREE))
@pytest.mark.filterwarnings("ignore::ppl_vae.contract.ParticleLoopWarning")  # the chain guide's, tested above
def test_each_hand_written_model_runs_through_every_command(name, tmp_path, monkeypatch, capsys):
    model, guide, estimators, heads = THREE[name]
    estimator = {"name": estimators.split(",")[0].split(":")[0]}
    config = _write(tmp_path, {**TUTORIAL, "model": model, "guide": guide, "estimator": estimator})
    monkeypatch.chdir(tmp_path)
    fast = ["-k", "5", "--eval-points", "10"]
    assert main(["fit", config, "--name", "run"]) == 0
    assert main(["evaluate", "runs/run", "-k", "5"]) == 0
    assert main(["sample", "runs/run", "-n", "4"]) == 0
    assert main(["compare-estimators", config, "--estimators", estimators, "--out", "e", "--grad-draws", "3", *fast]) == 0
    assert main(["compare-guides", config, "--heads", heads, "--out", "g", "-k", "25", "--eval-points", "10"]) == 0
    out = capsys.readouterr().out
    assert "log p(x) (importance)" in out and (tmp_path / "runs" / "run" / "samples.png").is_file()
    for folder, variants in (("e", estimators), ("g", heads)):
        rows = [yaml.safe_load((tmp_path / folder / v.replace(":", "_") / "variant.json").read_text())["row"]
                for v in variants.split(",")]
        assert all(math.isfinite(r["test_log_px"]) for r in rows), rows


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_site_module", "gaussian_mixture"])
@pytest.mark.filterwarnings("ignore::ppl_vae.contract.ParticleLoopWarning")
@pytest.mark.filterwarnings("ignore::ppl_vae.inference.record.NotReopenableWarning")
def test_each_hand_written_model_runs_through_the_python_api(name, digits, tmp_path):
    from ppl_vae.compare import CompareConfig, compare_estimators, compare_guides

    if name == "two_site_module":
        model, guide, estimator = TwoLatentVAE(), ChainGuide(), "trace"
    else:
        model, guide, estimator = gmm_vae(3), gmm_guide(3), "enum"
    fit(model, guide, digits, estimator=estimator, train=TrainConfig(**TRAIN))
    assert math.isfinite(evaluate(model, guide, digits.x_test[:10], config=EvalConfig(num_samples=5)).log_likelihood)
    assert sample_images(model, 4, digits.x_shape, seed=0).shape == (4, 64)
    config = config_from_dict({**TUTORIAL, **{k: v for k, v in zip(("model", "guide"), THREE[name][:2])},
                               "estimator": {"name": estimator}})
    small = CompareConfig(num_eval_points=10, num_samples=5, grad_draws=3)
    rows, _ = compare_estimators(config, [estimator], tmp_path / "e", small)
    assert math.isfinite(rows[0]["test_log_px"])
    with pytest.raises(ConfigError, match="PSIS k-hat, which needs at least 21 importance samples"):
        compare_guides(config, ["normal"], tmp_path / "g", small)
    rows, _ = compare_guides(config, ["normal"], tmp_path / "g", CompareConfig(num_eval_points=10, num_samples=25))
    assert math.isfinite(rows[0]["test_log_px"])
