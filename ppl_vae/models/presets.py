"""The standard models as shipped specs, in a registry (mirrored by ``configs/specs/*.yaml``).

Each entry gives a model spec, a guide spec, the estimator it is meant for,
and what data it needs. Discrete guide sites carry no ``enumerate`` flag: the
``enum`` estimator enumerates every enumerable guide site by itself, and the same
spec then also trains with ``tracegraph`` (REINFORCE), so the two can be compared. The tests take the list from :data:`SPECS`, so a new
entry is compiled, trained and evaluated automatically.

References

- Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
- Sohn, K., Lee, H. & Yan, X. (2015). Learning Structured Output Representation using Deep Conditional
  Generative Models. NeurIPS. (conditional VAE)
- Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR. (two stochastic layers)
- Neal, R. M. (1992). Connectionist learning of belief networks. (sigmoid belief layers)
- Jang, E., Gu, S. & Poole, B. (2017). Categorical Reparameterization with Gumbel-Softmax. ICLR;
  Maddison, C. J., Mnih, A. & Teh, Y. W. (2017). The Concrete Distribution. ICLR. (relaxed_vae)
- Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-Supervised Learning with Deep
  Generative Models. NeurIPS. (M2)
"""

from __future__ import annotations

from typing import NamedTuple

from ..spec import (
    GuideFactorSpec,
    GuideSpec,
    InputSpec,
    LatentSpec,
    ModelSpec,
    NetSpec,
    ObservedSpec,
)

__all__ = ["SPECS", "ShippedSpec"]


class ShippedSpec(NamedTuple):
    """A shipped model: its spec, its guide, and how it is meant to be trained."""

    model: ModelSpec
    guide: GuideSpec
    estimator: str  # the estimator it is meant for (estimator.name)
    flatten: bool  # data items as vectors (MLP) or images (conv)
    description: str  # one line for listings


_MLP = NetSpec(hidden_dims=(400,), activation="relu")
_TANH2 = NetSpec(hidden_dims=(200, 200), activation="tanh")
_TANH_SMALL = NetSpec(hidden_dims=(100, 100), activation="tanh")
_CONV = NetSpec(kind="conv", hidden_dims=(256,), activation="relu", channels=(32, 64))


SPECS: dict[str, ShippedSpec] = {
    "vae": ShippedSpec(
        ModelSpec(latents=(LatentSpec("z", dim=20),), observed=ObservedSpec(parents=("z",), net=_MLP)),
        GuideSpec((GuideFactorSpec("z", "normal", ("x",), _MLP),)),
        "trace",
        True,
        "z ~ N(0, I), x ~ Bernoulli(MLP(z)); q(z|x) diagonal Normal",
    ),
    "conv_vae": ShippedSpec(
        ModelSpec(latents=(LatentSpec("z", dim=20),), observed=ObservedSpec(parents=("z",), net=_CONV)),
        GuideSpec((GuideFactorSpec("z", "normal", ("x",), _CONV),)),
        "trace",
        False,
        "a VAE with a convolutional encoder and a transposed-convolutional decoder",
    ),
    "cvae": ShippedSpec(
        ModelSpec(
            latents=(LatentSpec("z", dim=20),),
            observed=ObservedSpec(parents=("z", "y"), net=_MLP),
            inputs=(InputSpec("y", "categorical", 10),),
        ),
        GuideSpec((GuideFactorSpec("z", "normal", ("x", "y"), _MLP),)),
        "trace",
        True,
        "conditional VAE: p(x|z,y) p(z), q(z|x,y), with the label y always given",
    ),
    "hierarchical": ShippedSpec(
        ModelSpec(
            latents=(
                LatentSpec("z2", dim=50),
                LatentSpec("z1", dim=100, parents=("z2",), net=_TANH_SMALL),
            ),
            observed=ObservedSpec(parents=("z1",), net=_TANH2),
        ),
        GuideSpec(
            (
                GuideFactorSpec("z1", "normal", ("x",), _TANH2),
                GuideFactorSpec("z2", "normal", ("z1",), _TANH_SMALL),
            )
        ),
        "trace",
        True,
        "two stochastic layers z2 -> z1 -> x (Burda et al. 2016, 784-200-200-100-100-50)",
    ),
    "bernoulli_vae": ShippedSpec(
        ModelSpec(latents=(LatentSpec("z", "bernoulli", dim=20),), observed=ObservedSpec(parents=("z",), net=_MLP)),
        GuideSpec((GuideFactorSpec("z", "bernoulli", ("x",), _MLP),)),
        "tracegraph",
        True,
        "binary latent units (a sigmoid belief layer) trained by REINFORCE",
    ),
    "categorical_vae": ShippedSpec(
        ModelSpec(
            latents=(LatentSpec("c", "categorical", dim=10), LatentSpec("z", dim=20)),
            observed=ObservedSpec(parents=("c", "z"), net=_MLP),
        ),
        GuideSpec(
            (
                GuideFactorSpec("c", "categorical", ("x",), _MLP),
                GuideFactorSpec("z", "normal", ("x", "c"), _MLP),
            )
        ),
        "enum",
        True,
        "a categorical latent c and a Normal z: p(x|c,z); q(c|x) q(z|x,c), c summed out exactly",
    ),
    "relaxed_vae": ShippedSpec(
        ModelSpec(
            latents=(LatentSpec("c", "relaxed_categorical", dim=10), LatentSpec("z", dim=20)),
            observed=ObservedSpec(parents=("c", "z"), net=_MLP),
        ),
        GuideSpec(
            (
                GuideFactorSpec("c", "relaxed_categorical", ("x",), _MLP),
                GuideFactorSpec("z", "normal", ("x", "c"), _MLP),
            )
        ),
        "trace",
        True,
        "the categorical latent relaxed by Gumbel-softmax (temperature 0.5): pathwise gradients, no REINFORCE",
    ),
    "m2": ShippedSpec(
        ModelSpec(
            latents=(LatentSpec("y", "categorical", dim=10, observed_when_given=True), LatentSpec("z", dim=50)),
            observed=ObservedSpec(parents=("y", "z"), net=NetSpec(hidden_dims=(500,), activation="softplus")),
        ),
        GuideSpec(
            (
                GuideFactorSpec("y", "categorical", ("x",), NetSpec(hidden_dims=(500,), activation="softplus")),
                GuideFactorSpec("z", "normal", ("x", "y"), NetSpec(hidden_dims=(500,), activation="softplus")),
            )
        ),
        "enum",
        True,
        "M2 (Kingma et al. 2014): y ~ Cat(1/10), z ~ N(0, I), x ~ p(x|y,z); q(y|x) q(z|x,y)",
    ),
}
