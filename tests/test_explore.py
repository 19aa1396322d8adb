"""Looking inside a trained model: traversals, interpolations, the latent map, attribute vectors and the report.

One tiny VAE with a 2-D latent (2 epochs on 300 of the 8x8 digits) is shared by the module; a hand-written
module with two latent sites (tests/user_models.py) goes through the traversal and the map.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from ppl_vae.cli import main
from ppl_vae.config import config_from_dict
from ppl_vae.errors import ConfigError, DataError, RunDirError
from ppl_vae.experiment import fit_experiment
from ppl_vae.explore import (
    attribute_vector,
    explore_all,
    interpolate,
    latent_map,
    load_attribute_labels,
    posterior_means,
    slerp,
    stroke_thickness,
    traverse,
)
from ppl_vae.plots import generate
from ppl_vae.report import write_report
from ppl_vae.runs import RunDir

TRAIN = {"epochs": 2, "batch_size": 50, "progress": False, "device": "cpu", "val_every": 0}
TINY = {
    "data": {"name": "digits", "num_train": 300},
    "model": {"name": "vae", "latent_dim": 2, "hidden_dims": [32]},
    "guide": {"name": "amortized", "hidden_dims": [32]},
    "train": TRAIN,
}
TWO_SITES = {
    "data": {"name": "digits", "num_train": 200},
    "model": {"name": "python", "target": "tests.user_models:TwoLatentVAE"},
    "guide": {"name": "python", "target": "tests.user_models:ChainGuide"},
    "train": {**TRAIN, "epochs": 1},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny 2-D VAE's experiment and run directory."""
    run = tmp_path_factory.mktemp("explore") / "run"
    exp, _ = fit_experiment(config_from_dict(TINY), RunDir(run))
    return exp, run


def _decoded(exp, codes: dict) -> torch.Tensor:
    """The mean of p(x|z) for ``codes``, decoded directly through ``generate`` (as the views should)."""
    n = next(iter(codes.values())).shape[0]
    trace = generate(exp.model, n, exp.data.x_shape, conditioned=codes)
    return trace.nodes["x"]["fn"].mean.reshape(n, *exp.data.image_shape)


def _guide_means(exp, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return poutine.trace(exp.guide).get_trace(x, None).nodes["z"]["fn"].mean


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# -- traversal -----------------------------------------------------------------------------------------------


def test_traversal_rows_steps_and_endpoints_decode_the_codes_they_claim(trained, tmp_path):
    exp, _ = trained
    t = traverse(exp, tmp_path, top_k=2, steps=5, index=3)
    assert t.path == tmp_path / "traverse.png" and t.path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(t.units) == ["z[0]", "z[1]"] and len(t.images) == len(t.codes) == len(t.values) == 2
    assert all(images.shape == (5, 1, 8, 8) for images in t.images)
    assert t.scores == sorted(t.scores, reverse=True) and t.measure == "kl"
    x = exp.data.x_test
    base = _guide_means(exp, x[3:4])
    assert torch.allclose(t.base_codes["z"], base) and t.base == "test image 3"
    for row, unit in enumerate(t.units):
        d = int(unit[2])
        # N(0, I) prior: the sweep runs from -3 to +3 around the image's code, the other unit fixed
        assert torch.allclose(t.values[row], base[0, d] + torch.linspace(-3, 3, 5), atol=1e-6)
        assert torch.allclose(t.codes[row]["z"][:, 1 - d], base[0, 1 - d].expand(5))
        assert torch.allclose(t.images[row], _decoded(exp, t.codes[row]), atol=1e-6)
    # the ranking is the closed-form KL(q||p) per dimension, averaged over the first test points
    with torch.no_grad():
        fn = poutine.trace(exp.guide).get_trace(x[:1000], None).nodes["z"]["fn"].base_dist
        kl = (0.5 * (fn.scale**2 + fn.loc**2 - 1) - fn.scale.log()).mean(0)
    assert t.scores == pytest.approx([float(kl[int(u[2])]) for u in t.units], rel=1e-4)


def test_traversal_around_the_prior_mean(trained, tmp_path):
    t = traverse(trained[0], tmp_path, base="prior", top_k=1, steps=3)
    assert t.base == "prior mean" and torch.equal(t.base_codes["z"], torch.zeros(1, 2))
    assert torch.allclose(t.values[0], torch.tensor([-3.0, 0.0, 3.0]))


# -- interpolation ------------------------------------------------------------------------------------------


def test_slerp_keeps_the_norm_path_and_the_endpoints():
    torch.manual_seed(0)
    a, b, t = torch.randn(4, 6), 3 * torch.randn(4, 6), torch.linspace(0, 1, 7)
    path = slerp(a, b, t)
    assert torch.equal(path[:, 0], a) and torch.equal(path[:, -1], b)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    assert torch.allclose(path.norm(dim=-1), (1 - t) * na + t * nb, atol=1e-5)  # the norm goes linearly
    omega = torch.arccos((a * b).sum(-1, keepdim=True) / (na * nb))
    cos_to_a = (path * a.unsqueeze(1)).sum(-1) / (path.norm(dim=-1) * na)
    assert torch.allclose(cos_to_a, torch.cos(t * omega), atol=1e-5)  # constant angular speed
    # endpoints of equal norm: Shoemake's formula
    b_same = b / nb * na
    omega = torch.arccos((a * b_same).sum(-1, keepdim=True) / na**2).unsqueeze(1)
    tt = t.reshape(1, -1, 1)
    textbook = (torch.sin((1 - tt) * omega) * a.unsqueeze(1) + torch.sin(tt * omega) * b_same.unsqueeze(1)) / torch.sin(omega)
    assert torch.allclose(slerp(a, b_same, t), textbook, atol=1e-5)


def test_interpolation_paths_and_the_pixel_blend(trained, tmp_path):
    exp, _ = trained
    out = interpolate(exp, tmp_path, pairs=[(0, 1), (2, 5)], steps=6)
    assert out.path.is_file()
    for images in (out.linear_images, out.slerp_images, out.pixel_images):
        assert images.shape == (2, 6, 1, 8, 8)
    x = exp.data.x_test
    means = _guide_means(exp, x[[0, 1, 2, 5]])
    for kind in (out.linear_codes, out.slerp_codes):
        assert kind["z"].shape == (2, 6, 2)
        assert torch.allclose(kind["z"][:, 0], means[[0, 2]]) and torch.allclose(kind["z"][:, -1], means[[1, 3]])
    assert torch.allclose(out.linear_codes["z"][0, 2], means[0] + 0.4 * (means[1] - means[0]), atol=1e-6)
    assert torch.allclose(out.slerp_images[1], _decoded(exp, {"z": out.slerp_codes["z"][1]}), atol=1e-6)
    assert torch.equal(out.pixel_images[:, 0], x[[0, 2]].reshape(2, 1, 8, 8))
    assert torch.allclose(out.pixel_images[0, 3], (0.4 * x[0] + 0.6 * x[1]).reshape(1, 8, 8), atol=1e-6)


# -- the latent map ---------------------------------------------------------------------------------------------


def test_a_2d_latent_is_mapped_as_it_is_with_the_manifold_grid(trained, tmp_path):
    exp, _ = trained
    out = latent_map(exp, tmp_path, points=100, grid=4)
    assert [p.name for p in out.paths] == ["map.png", "manifold.png"] and all(p.is_file() for p in out.paths)
    assert list(out.embeddings) == ["latent"] and out.embeddings["latent"].shape == (100, 2)
    assert torch.equal(out.labels, exp.data.y_test[:100]) and out.notes == []
    assert torch.allclose(out.codes, _guide_means(exp, exp.data.x_test[:100]))
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(4) + 0.5) / 4)
    assert out.grid_codes.shape == (4, 4, 2) and out.grid_images.shape == (4, 4, 1, 8, 8)
    assert torch.allclose(out.grid_codes[0, :, 0], quantiles) and torch.allclose(out.grid_codes[:, 0, 1], quantiles.flip(0))
    assert torch.allclose(out.grid_images[1, 2], _decoded(exp, {"z": out.grid_codes[1, 2:3]})[0], atol=1e-6)


# -- attribute vectors -------------------------------------------------------------------------------------------


def test_a_class_vector_is_the_difference_of_the_two_mean_codes(trained, tmp_path):
    exp, _ = trained
    out = attribute_vector(exp, tmp_path, "class:1:7", strengths=(0.0, 1.0, 2.0), rows=3)
    x, y = exp.data.x_test, exp.data.y_test
    means = _guide_means(exp, x)
    expected = means[y == 7].mean(0) - means[y == 1].mean(0)
    assert torch.allclose(out.vector["z"], expected, atol=1e-6)
    assert out.num_with == int((y == 7).sum()) and out.num_without == int((y == 1).sum())
    assert out.path.name == "attribute_class_1_to_7.png" and out.path.is_file()
    assert out.images.shape == (3, 4, 1, 8, 8) and all(int(y[i]) == 1 for i in out.indices)
    assert torch.equal(out.images[:, 0], x[out.indices].reshape(3, 1, 8, 8))  # the test images themselves
    shifted = means[out.indices[0]] + 2.0 * expected
    assert torch.allclose(out.codes["z"][0, 2], shifted, atol=1e-6)
    assert torch.allclose(out.images[0, 3], _decoded(exp, {"z": shifted[None]})[0], atol=1e-5)


def test_stroke_thickness_is_ink_above_the_class_median():
    ink_of = [3, 5, 9, 2, 4, 4, 7]
    x = torch.zeros(7, 10)
    for i, ink in enumerate(ink_of):
        x[i, :ink] = 0.9
    x[:, -1] = 0.5  # not above 0.5: not ink
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    ink, thick = stroke_thickness(x, y)
    assert ink.tolist() == ink_of
    # class 0: median 5 -> only 9 is thick; class 1: median of [2, 4, 4, 7] is the lower middle value, 4
    assert thick.tolist() == [False, False, True, False, False, False, True]
    assert stroke_thickness(x)[1].tolist() == [False, True, True, False, False, False, True]  # median of all: 4


def test_an_attribute_from_a_file_of_labels(trained, tmp_path):
    exp, _ = trained
    n = exp.data.x_test.shape[0]
    flags = (np.arange(n) % 3 == 0).astype(int)
    np.save(tmp_path / "every_third.npy", flags)
    np.savetxt(tmp_path / "every_third.txt", flags, fmt="%d")
    a = attribute_vector(exp, tmp_path, tmp_path / "every_third.npy", rows=2)
    b = attribute_vector(exp, tmp_path, str(tmp_path / "every_third.txt"), rows=2)
    means = _guide_means(exp, exp.data.x_test)
    expected = means[flags == 1].mean(0) - means[flags == 0].mean(0)
    assert torch.allclose(a.vector["z"], expected, atol=1e-6) and torch.equal(a.vector["z"], b.vector["z"])
    assert a.path.name == "attribute_every_third.png" and a.num_with == int(flags.sum())
    np.save(tmp_path / "short.npy", flags[:-1])
    with pytest.raises(DataError, match=f"holds {n - 1} attribute labels; the test set has {n} images") as err:
        load_attribute_labels(tmp_path / "short.npy", n)
    _one_line(err)
    np.savetxt(tmp_path / "twos.txt", 2 * flags)
    with pytest.raises(DataError, match="must hold only 0 and 1"):
        load_attribute_labels(tmp_path / "twos.txt", n)


# -- refusals ------------------------------------------------------------------------------------------------------


def test_views_that_need_what_a_run_lacks_refuse_in_one_line(trained, tmp_path):
    exp, _ = trained
    unlabelled = dataclasses.replace(exp, data=dataclasses.replace(exp.data, y_train=None, y_val=None, y_test=None))
    with pytest.raises(ConfigError, match="a class vector needs labels, and this data set has none") as err:
        attribute_vector(unlabelled, tmp_path, "class:1:7")
    _one_line(err)
    uncoloured = latent_map(unlabelled, tmp_path, points=20, grid=2)  # drawn without colours, and said so
    assert uncoloured.labels is None and uncoloured.notes == ["the data set has no labels, so the map is uncoloured"]
    everything = explore_all(unlabelled, tmp_path / "all")
    assert [s.split(":")[0] for s in everything.skipped] == ["attribute class"]
    m1m2 = dataclasses.replace(exp, stage=exp)
    for view in (traverse, interpolate, latent_map, explore_all):
        with pytest.raises(ConfigError, match="M1\\+M2 run's M2 models the latent codes of its first stage") as err:
            view(m1m2, tmp_path)
        _one_line(err)
    with pytest.raises(ConfigError, match=r"sites \['w'\] are not latent sites of the guide"):
        traverse(exp, tmp_path, sites=["w"])


def test_the_command_line_refuses_in_one_line(trained, capsys):
    _, run = trained
    assert main(["explore", str(run), "attribute", "--class", "1:99", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "ppl-vae: error: no test image has the class 99; the classes are [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
    assert main(["explore", str(run), "map", "--methods", "pca,mds"]) == 2
    assert capsys.readouterr().err.startswith("ppl-vae: error: map methods must be some of ['pca', 'tsne', 'umap']")
    assert main(["report", str(run / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# -- a hand-written model -------------------------------------------------------------------------------------------


def test_a_hand_written_module_with_two_latent_sites(tmp_path):
    exp, _ = fit_experiment(config_from_dict(TWO_SITES), RunDir(tmp_path / "run"))
    t = traverse(exp, tmp_path, top_k=None, steps=3)
    assert sorted(t.units) == ["z1[0]", "z1[1]", "z2[0]", "z2[1]", "z2[2]"] and t.measure == "kl"
    for row in range(5):
        assert set(t.codes[row]) == {"z1", "z2"} and t.images[row].shape == (3, 1, 8, 8)
        decoded = generate(exp.model, 3, (64,), conditioned=t.codes[row]).nodes["x"]["fn"].mean
        assert torch.allclose(t.images[row], decoded.reshape(3, 1, 8, 8), atol=1e-6)
    # the chain guide's z2 is its mean given z1 at its mean
    x = exp.data.x_test[:40]
    means = posterior_means(exp.model, exp.guide, x)
    with torch.no_grad():
        conditioned = poutine.condition(exp.guide, data={"z1": means["z1"]})
        fn = poutine.trace(conditioned).get_trace(x, None).nodes["z2"]["fn"]
    assert torch.allclose(means["z2"], fn.mean)
    m = latent_map(exp, tmp_path, points=40, methods=["pca", "tsne"])
    assert list(m.embeddings) == ["PCA", "t-SNE"] and m.codes.shape == (40, 5) and m.grid_images is None
    assert all(points.shape == (40, 2) for points in m.embeddings.values()) and m.paths == [tmp_path / "map.png"]


# -- the report ------------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value is not None]


def _check_page(page: Path, root: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text())
    parser.close()
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not any("http" in link for link in parser.links)
    embedded = {link.split(",", 1)[1] for link in parser.links if link.startswith("data:image/png;base64,")}
    pngs = sorted(root.rglob("*.png"))
    assert pngs and all(base64.b64encode(p.read_bytes()).decode() in embedded for p in pngs), "every PNG, embedded"
    return parser


def test_explore_all_then_a_self_contained_report(trained, capsys):
    _, run = trained
    assert main(["sample", str(run), "-n", "4", "--device", "cpu"]) == 0
    assert main(["explore", str(run), "all", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    names = {"traverse", "interpolate", "map", "manifold", "attribute_class_1_to_7", "attribute_thickness"}
    assert {p.stem for p in (run / "explore").glob("*.png")} == names and "(skipped" not in out
    (run / "evaluation.json").write_text(json.dumps({"split": "test", "elbo": -40.5, "log_likelihood": -38.25}))
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    _check_page(page, run)
    text = page.read_text()
    assert "-38.25" in text and "latent_dim: 2" in text and "Learning curves" in text


def test_a_comparison_folder_gets_a_report(trained, tmp_path):
    exp, run = trained
    from ppl_vae.plots import plot_comparison, plot_learning_curves

    history = RunDir(run).read_metrics()
    rows = [{"variant": "trace", "test_elbo": -40.0, "test_log_px": -38.0}, {"variant": "enum", "refused": "no discrete site"}]
    (tmp_path / "comparison.md").write_text("| variant | test_elbo |\n|---|---|\n| trace | -40 |\n")
    (tmp_path / "comparison.csv").write_text("variant,test_elbo,test_log_px,refused\ntrace,-40.0,-38.0,\nenum,,,no discrete site\n")
    plot_comparison({"trace": history}, rows, "test_log_px", "log p(x)", "compare", tmp_path / "comparison.png")
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "variant.json").write_text(json.dumps({"row": rows[0], "history": history}))
    plot_learning_curves(history, tmp_path / "trace" / "curves.png")
    (tmp_path / "enum").mkdir()
    (tmp_path / "enum" / "variant.json").write_text(json.dumps({"row": rows[1], "history": []}))
    page = write_report(tmp_path)
    assert page == tmp_path / "report.html"
    _check_page(page, tmp_path)
    text = page.read_text()
    assert "refused: no discrete site" in text and "<td>-38.000</td>" in text and "Comparison" in text
    with pytest.raises(RunDirError, match="neither a run directory"):
        write_report(tmp_path / "trace")


@pytest.mark.slow
def test_a_real_comparison_and_a_function_model_through_every_view(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    config = {**TINY, "model": {"name": "python", "target": "tests.user_models:tutorial_model"},
              "guide": {"name": "python", "target": "tests.user_models:tutorial_guide"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["compare-estimators", "config.yaml", "--estimators", "trace,iwae:3", "--out", "cmp", "-k", "5",
                 "--eval-points", "20", "--grad-draws", "2"]) == 0
    assert main(["report", "cmp"]) == 0
    _check_page(tmp_path / "cmp" / "report.html", tmp_path / "cmp")
    assert main(["fit", "config.yaml", "--name", "fn"]) == 0
    assert main(["explore", "runs/fn", "all"]) == 0
    assert main(["report", "runs/fn"]) == 0
    assert "(skipped" not in capsys.readouterr().out
    _check_page(tmp_path / "runs" / "fn" / "report.html", tmp_path / "runs" / "fn")
    for view in ("traverse", "interpolate", "map", "attribute_class_1_to_7", "attribute_thickness"):
        assert (tmp_path / "runs" / "fn" / "explore" / f"{view}.png").is_file()
    pyro.clear_param_store()
    assert math.isfinite(json.loads((tmp_path / "cmp" / "trace" / "variant.json").read_text())["row"]["test_elbo"])
