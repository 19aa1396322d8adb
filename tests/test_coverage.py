"""Registry coverage: every estimator against every shipped spec, and every real-valued guide head against
every shipped spec with a real-valued latent.

The lists come from the registries (:data:`~ppl_vae.inference.estimators.ESTIMATORS`,
:data:`~ppl_vae.models.presets.SPECS`, :data:`~ppl_vae.guides.heads.HEADS`), so a new entry is covered
automatically: it must train, or be refused up front with a :class:`~ppl_vae.ConfigError` that names a
guide site, and which of the two is written down below in :data:`REFUSED`.

Data: 32 points of scikit-learn's 8x8 digits, one step of one epoch. The semi-supervised M2 spec is run on
*unlabelled* batches (labels dropped), because with labels its ``y`` is observed and the spec has no discrete
guide site left to exercise; its labelled path is covered by ``tests/test_spec.py``.

The default run takes a subset of each matrix that still reaches every registry entry (:func:`_default_pairs`,
:func:`_head_pairs`, checked by :func:`test_default_run_covers_every_registry_entry`); ``-m slow`` runs the rest.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from ppl_vae import ConfigError, DataConfig, estimator_config, TrainConfig, fit, load_dataset
from ppl_vae.config import ComponentConfig, ExperimentConfig
from ppl_vae.families import FAMILIES
from ppl_vae.heads import HEADS
from ppl_vae.compare import guide_variants
from ppl_vae.inference.estimators import ESTIMATORS
from ppl_vae.models.presets import SPECS, ShippedSpec
from ppl_vae.compile import compile_spec

TRAIN = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu", val_every=0)

# Why an estimator refuses a guide site: a phrase its ConfigError must contain.
_PATHWISE = "no pathwise gradient"  # trace/iwae (and jit_trace): a discrete sample has no pathwise gradient
_MEANFIELD = "reparameterized"  # meanfield (and jit_meanfield): TraceMeanField_ELBO needs rsample at every site
_RENYI = "score-function"  # renyi: Pyro's RenyiELBO has no correct score-function term, so it is refused outright
_ENUM = "nor enumerable"  # enum (and jit_enum): the site can be neither enumerated nor reparameterized

#: (estimator, shipped spec) -> (guide site, reason phrase): pairs that must be refused before any step.
#: Every pair not listed must train. ``tracegraph`` and ``jit_tracegraph`` (score function) train them all.
REFUSED: dict[tuple[str, str], tuple[str, str]] = {
    # bernoulli_vae: z ~ Bernoulli(logits).to_event(1), 20 binary units in one site. Not reparameterizable, and
    # an Independent Bernoulli has no enumerate support (2^20 joint values), so only tracegraph applies.
    ("trace", "bernoulli_vae"): ("z", _PATHWISE),
    ("meanfield", "bernoulli_vae"): ("z", _MEANFIELD),
    ("enum", "bernoulli_vae"): ("z", _ENUM),
    ("iwae", "bernoulli_vae"): ("z", _PATHWISE),
    ("renyi", "bernoulli_vae"): ("z", _RENYI),
    ("jit_trace", "bernoulli_vae"): ("z", _PATHWISE),
    ("jit_meanfield", "bernoulli_vae"): ("z", _MEANFIELD),
    ("jit_enum", "bernoulli_vae"): ("z", _ENUM),
    # categorical_vae: c ~ Categorical(10) in the guide. Enumerable (enum trains it exactly), but it has no
    # pathwise gradient, so every pathwise estimator refuses it (allow_score_function is off by default).
    ("trace", "categorical_vae"): ("c", _PATHWISE),
    ("meanfield", "categorical_vae"): ("c", _MEANFIELD),
    ("iwae", "categorical_vae"): ("c", _PATHWISE),
    ("renyi", "categorical_vae"): ("c", _RENYI),
    ("jit_trace", "categorical_vae"): ("c", _PATHWISE),
    ("jit_meanfield", "categorical_vae"): ("c", _MEANFIELD),
    # m2 on unlabelled batches: y ~ Categorical(10) in the guide, as c above.
    ("trace", "m2"): ("y", _PATHWISE),
    ("meanfield", "m2"): ("y", _MEANFIELD),
    ("iwae", "m2"): ("y", _PATHWISE),
    ("renyi", "m2"): ("y", _RENYI),
    ("jit_trace", "m2"): ("y", _PATHWISE),
    ("jit_meanfield", "m2"): ("y", _MEANFIELD),
    # hierarchical: the guide q(z1|x) q(z2|z1) samples in the reverse of the model's order p(z2) p(z1|z2).
    # TraceMeanField_ELBO's analytic KL(q(z1|x) || p(z1|z2)) then treats z2 as independent of z1, though z2
    # was drawn given z1: the objective would be biased, so it is refused up front.
    ("meanfield", "hierarchical"): ("z[12]", "mean.?field"),
    ("jit_meanfield", "hierarchical"): ("z[12]", "mean.?field"),
}

#: Pairs whose current behaviour is a known bug: marked xfail (strict), so a fix shows up as an XPASS. None now.
_KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _small_nets(shipped: ShippedSpec, hidden: int = 16) -> ShippedSpec:
    """The same spec (families, sizes, structure, net kinds) with small networks."""

    def small(net):
        return dataclasses.replace(net, hidden_dims=(hidden,), channels=(4, 8))

    model = dataclasses.replace(
        shipped.model,
        latents=tuple(dataclasses.replace(v, net=small(v.net)) for v in shipped.model.latents),
        observed=dataclasses.replace(shipped.model.observed, net=small(shipped.model.observed.net)),
    )
    guide = dataclasses.replace(
        shipped.guide, factors=tuple(dataclasses.replace(f, net=small(f.net)) for f in shipped.guide.factors)
    )
    return shipped._replace(model=model, guide=guide)


@pytest.fixture(scope="module")
def digits():
    return {flat: load_dataset(DataConfig(name="digits", num_train=32, flatten=flat)) for flat in (True, False)}


def _data_for(shipped: ShippedSpec, digits):
    data = digits[shipped.flatten]
    if any(v.observed_when_given for v in shipped.model.latents):
        # Unlabelled batches: the semi-observed y becomes a guide site.
        data = dataclasses.replace(data, y_train=None, y_val=None, y_test=None)
    return data


def _snapshot(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _unchanged(before, *modules):
    after = [p for m in modules for p in m.parameters()]
    assert len(after) == len(before)
    return [i for i, (a, b) in enumerate(zip(after, before)) if torch.equal(a, b)]


def _rotated(items: list, start: int) -> list:
    return items[start % len(items) :] + items[: start % len(items)]


def _default_pairs() -> set[tuple[str, str]]:
    """The (estimator, spec) pairs of the default run; the rest of the matrix runs under ``-m slow``.

    Every estimator trains one spec and is refused one spec (where it refuses any), every spec is trained by its
    shipped estimator, and every refusal reason is checked once; the specs are rotated so that the estimators
    spread over them.
    """
    estimators, specs = list(ESTIMATORS), list(SPECS)
    chosen = {(shipped.estimator, name) for name, shipped in SPECS.items()}
    for i, est in enumerate(estimators):
        order = _rotated(specs, i)
        chosen.add(next((est, s) for s in order if (est, s) not in REFUSED))
        refused = [s for s in order if (est, s) in REFUSED]
        if refused:
            chosen.add((est, refused[0]))
    for reason in sorted({reason for _, reason in REFUSED.values()}):
        if not any(REFUSED.get(pair, (None, None))[1] == reason for pair in chosen):
            chosen.add(next(pair for pair, (_, r) in REFUSED.items() if r == reason))
    return chosen


def _pairs():
    fast = _default_pairs()
    for est in ESTIMATORS:
        for spec in SPECS:
            marks = []
            if (est, spec) in _KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, raises=UserWarning, reason=_KNOWN_BUGS[(est, spec)]))
            if (est, spec) not in fast:
                marks.append(pytest.mark.slow)
            yield pytest.param(est, spec, marks=marks, id=f"{est}-{spec}")


def test_expectation_tables_name_registry_entries():
    # A renamed or removed estimator or spec must not leave a stale expectation behind.
    for est, spec in [*REFUSED, *_KNOWN_BUGS]:
        assert est in ESTIMATORS and spec in SPECS, (est, spec)
    # The shipped estimator of each spec must be one that trains it.
    for name, shipped in SPECS.items():
        assert (shipped.estimator, name) not in REFUSED, name


@pytest.mark.parametrize("estimator, spec", list(_pairs()))
def test_every_estimator_trains_or_refuses_every_shipped_spec(estimator, spec, digits):
    shipped = SPECS[spec]
    data = _data_for(shipped, digits)
    model, guide = compile_spec(shipped.model, shipped.guide, data.x_shape)
    before = _snapshot(model, guide)

    def run():
        return fit(model, guide, data, estimator=estimator_config(estimator), train=TRAIN)

    if (estimator, spec) in REFUSED:
        site, reason = REFUSED[(estimator, spec)]
        with pytest.raises(ConfigError, match=rf"guide site '{site}'") as err:
            run()
        assert re.search(reason, str(err.value)), str(err.value)
        # Refused up front: not one step was taken.
        assert len(_unchanged(before, model, guide)) == len(before)
    else:
        result = run()
        assert math.isfinite(result.final_loss)
        # One Adam step moves every parameter tensor that gets any gradient: all of them should.
        assert _unchanged(before, model, guide) == []


# ---------------------------------------------------------------------------------------------
# Every real-valued guide head in every shipped spec that has a real-valued latent.

_REAL_HEADS = sorted(h for h in HEADS if HEADS[h].accepts(FAMILIES["normal"]))
_REAL_SPECS = sorted(
    name for name, s in SPECS.items() if any(FAMILIES[v.family].real_support for v in s.model.latents)
)


def test_real_heads_and_specs_are_not_empty():
    # Guard the parametrization below against silently testing nothing.
    assert {"normal", "fullcov", "iaf"} <= set(_REAL_HEADS)
    assert {"vae", "hierarchical", "m2"} <= set(_REAL_SPECS) and "bernoulli_vae" not in _REAL_SPECS


def _head_pairs():
    """Every (spec, head) pair; the default run keeps each head with one spec and each spec with one head (a
    rotated diagonal), and the rest runs under ``-m slow``."""
    n = max(len(_REAL_SPECS), len(_REAL_HEADS))
    fast = {(_REAL_SPECS[i % len(_REAL_SPECS)], _REAL_HEADS[i % len(_REAL_HEADS)]) for i in range(n)}
    for spec in _REAL_SPECS:
        for head in _REAL_HEADS:
            marks = () if (spec, head) in fast else pytest.mark.slow
            yield pytest.param(spec, head, marks=marks, id=f"{spec}-{head}")


def test_default_run_covers_every_registry_entry():
    # The fast subsets above must still reach every estimator, spec, refusal reason and head.
    fast = _default_pairs()
    trained = {pair for pair in fast if pair not in REFUSED}
    assert {est for est, _ in trained} == set(ESTIMATORS)
    assert {spec for _, spec in trained} == set(SPECS)
    assert {REFUSED[pair][1] for pair in fast if pair in REFUSED} == {reason for _, reason in REFUSED.values()}
    fast_heads = [p.values for p in _head_pairs() if not p.marks]
    assert {spec for spec, _ in fast_heads} == set(_REAL_SPECS) and {h for _, h in fast_heads} == set(_REAL_HEADS)


@pytest.mark.parametrize("spec, head", list(_head_pairs()))
def test_every_real_guide_head_trains_every_shipped_spec(spec, head, digits):
    shipped = _small_nets(SPECS[spec])
    data = _data_for(shipped, digits)
    config = ExperimentConfig(model=ComponentConfig("spec", shipped.model), guide=ComponentConfig("spec", shipped.guide))
    [(label, variant)] = guide_variants(config, [head])
    assert label == head
    latents = {v.name: v for v in shipped.model.latents}
    for factor in variant.guide.config.factors:
        real = FAMILIES[latents[factor.name].family].real_support
        assert factor.head == (head if real else latents[factor.name].family), factor
    model, guide = compile_spec(variant.model.config, variant.guide.config, data.x_shape)
    before = _snapshot(guide)
    result = fit(model, guide, data, estimator=estimator_config(shipped.estimator), train=TRAIN)
    assert math.isfinite(result.final_loss)
    names = [name for name, _ in guide.named_parameters()]
    assert [names[i] for i in _unchanged(before, guide)] == []
