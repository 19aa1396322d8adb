"""Semi-supervised M2 on the 8x8 digits: 100 labels, three ways to handle the unlabelled class.

The M2 model of Kingma et al. (2014), y ~ Cat(1/10), z ~ N(0, I), x ~ p(x|y,z), with the
classifier q(y|x) and q(z|x,y) as its guide, is trained on the digits with all but 100 training
labels hidden. The unlabelled y is handled by exact enumeration, by REINFORCE with a neural
baseline, or by the Gumbel-softmax relaxation; each run uses the same networks, seed and epochs,
and the script prints the test error of q(y|x) for each. It also writes ``classes.png`` (rows:
styles z ~ p(z); columns: the classes) for the enumerated model.

    python examples/semi_supervised.py --epochs 30
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import ppl_vae
from ppl_vae.inference.estimators import make_estimator
from ppl_vae.inference.semisup import SemiSupervised_ELBO, kingma_aux_weight, unbiased_labelled_weight
from ppl_vae.labelled import hide_labels
from ppl_vae.plots import plot_class_grid
from ppl_vae.spec import GuideFactorSpec, GuideSpec, LatentSpec, ModelSpec, NetSpec, ObservedSpec

WAYS = {  # label family, estimator
    "enumeration": ("categorical", "enum"),
    "REINFORCE (neural baseline)": ("categorical", "tracegraph:nn"),
    "Gumbel-softmax relaxation": ("relaxed_categorical", "trace"),
}


def m2(family: str, hidden: int, z_dim: int) -> tuple[ModelSpec, GuideSpec]:
    net = NetSpec(hidden_dims=(hidden,), activation="softplus")
    model = ModelSpec(
        latents=(LatentSpec("y", family, dim=10, observed_when_given=True), LatentSpec("z", dim=z_dim)),
        observed=ObservedSpec(parents=("y", "z"), net=net),
    )
    guide = GuideSpec((GuideFactorSpec("y", family, ("x",), net), GuideFactorSpec("z", "normal", ("x", "y"), net)))
    return model, guide


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-labels", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--labelled-per-batch", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples K for log p(x)")
    args = parser.parse_args(argv)

    data = hide_labels(ppl_vae.load_dataset(ppl_vae.DataConfig(name="digits")), args.num_labels, seed=0)
    n = len(data.x_train)
    aux = kingma_aux_weight(n, args.num_labels)
    labelled = unbiased_labelled_weight(n, args.num_labels, args.batch_size, args.labelled_per_batch)
    train = ppl_vae.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, progress=False, device="cpu")
    errors, first = {}, None
    for way, (family, estimator) in WAYS.items():
        model_spec, guide_spec = m2(family, args.hidden, args.z_dim)
        model = ppl_vae.make_model("spec", data.x_shape, model_spec)
        guide = ppl_vae.make_guide("spec", model, guide_spec)
        elbo = SemiSupervised_ELBO(make_estimator(estimator), aux_weight=aux, labelled_weight=labelled)
        result = ppl_vae.fit(model, guide, data, estimator=elbo, train=train, labelled_per_batch=args.labelled_per_batch)
        errors[way] = 1 - result.history[-1]["test_accuracy"]
        first = first or (model, guide)
    print(f"digits, {args.num_labels} labels of {n}, {args.epochs} epochs: test error of q(y|x)")
    for way, error in errors.items():
        print(f"  {way:30s} {100 * error:6.2f}%")
    model, guide = first
    print(f"saved {plot_class_grid(model, data.image_shape, 'classes.png')}")
    result = ppl_vae.evaluate(model, guide, data.x_test, None, ppl_vae.EvalConfig(num_samples=args.num_samples))
    print(f"enumerated M2: test ELBO {result.elbo:.2f}, log p(x) {result.log_likelihood:.2f} nats")
    return {"test_errors": errors, "elbo": result.elbo, "log_likelihood": result.log_likelihood}


if __name__ == "__main__":
    main()
