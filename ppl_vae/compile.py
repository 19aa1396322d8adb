"""The spec compiler: a :class:`~ppl_vae.spec.ModelSpec` and a :class:`~ppl_vae.spec.GuideSpec` to Pyro modules.

The schema (:mod:`ppl_vae.spec`) checks each spec where it is built; this module checks the guide
against the model (:func:`~ppl_vae.spec.check_guide`) and builds the two ``PyroModule`` s.
"""

from __future__ import annotations

from typing import NamedTuple

from .guides.spec_guide import SpecGuide
from .models.spec_model import SpecModel
from .programs import seeded
from .spec import GuideSpec, ModelSpec

__all__ = ["Compiled", "compile_spec"]


class Compiled(NamedTuple):
    """A compiled spec: the model and the guide that pairs with it."""

    model: SpecModel
    guide: SpecGuide


def compile_spec(model: ModelSpec, guide: GuideSpec, x_shape: tuple[int, ...], *, seed: int | None = None) -> Compiled:
    """Compile a spec into a model and guide for data items of shape ``x_shape``.

    :param int seed: seeds the initialisation of the networks (the global RNGs are left as they were);
        None draws from the global RNGs.
    :raises SpecError: when the guide does not fit the model, naming the variable at fault.
    """
    with seeded(seed):
        compiled = SpecModel(x_shape, model)
        return Compiled(compiled, SpecGuide.for_model(compiled, guide))
