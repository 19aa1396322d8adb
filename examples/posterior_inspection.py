"""Inspect one amortized posterior: q(z|x) draws against importance-resampled draws, with PSIS k-hat and ESS.

Trains a small spec VAE on the offline 8x8 digits with the guide head of your
choice (``normal``, ``laplace``, ``fullcov``, ``iaf:2``, ``planar:4``, ...),
then, for one test digit, draws K samples from q(z|x), weights them by
p(x, z) / q(z|x), and resamples them by those weights (sampling-importance
resampling, which approaches p(z|x) when the weights are well behaved). It
prints ``az.summary`` of the two sets side by side, the point's Pareto k-hat
(below 0.5: good; above 0.7: the importance estimate is unreliable) and the
weights' effective sample size, and saves ``az.plot_posterior`` of both sets.
Where the two columns differ, the guide misses the posterior.

    python examples/posterior_inspection.py --guide iaf:2 --epochs 50 --out posterior.png
"""

from __future__ import annotations

import argparse
import warnings
from typing import Optional, Sequence

import ppl_vae
from ppl_vae.inference.diagnostics import posterior_inference_data
from ppl_vae.compile import compile_spec
from ppl_vae.spec import GuideFactorSpec, GuideSpec, LatentSpec, ModelSpec, NetSpec, ObservedSpec


def _arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its upcoming refactor on import; the notice is not about this script's use.
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz

    return arviz


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guide", default="iaf:2", help="guide head for z: normal | laplace | fullcov | iaf:N | ...")
    parser.add_argument("--latent-dim", type=int, default=4, help="size of z (small, so the summary stays readable)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units of the encoder and decoder")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--num-train", type=int, default=None, help="limit the training set (quick runs)")
    parser.add_argument("--num-samples", type=int, default=1000, help="K draws from q(z|x) for the inspected digit")
    parser.add_argument("--num-eval", type=int, default=100, help="test points for the ELBO and log p(x)")
    parser.add_argument("--eval-samples", type=int, default=200, help="importance samples per point for log p(x)")
    parser.add_argument("--index", type=int, default=0, help="which test digit to inspect")
    parser.add_argument("--out", default="posterior.png", help="where to save the plot (PNG)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    data = ppl_vae.load_dataset(ppl_vae.DataConfig(name="digits", binarize="dynamic", num_train=args.num_train))
    net = NetSpec(hidden_dims=(args.hidden,))
    model, guide = compile_spec(
        ModelSpec(latents=(LatentSpec("z", dim=args.latent_dim),), observed=ObservedSpec(parents=("z",), net=net)),
        GuideSpec((GuideFactorSpec("z", args.guide, ("x",), net),)),
        data.x_shape,
    )
    result = ppl_vae.fit(
        model,
        guide,
        data,
        estimator="trace",
        optim=ppl_vae.OptimConfig(lr=3e-3),
        train=ppl_vae.TrainConfig(epochs=args.epochs, batch_size=32, device=args.device, val_every=0),
    )
    x_test = data.x_test.to(result.device)
    test = ppl_vae.evaluate(
        model, guide, x_test[: args.num_eval], config=ppl_vae.EvalConfig(num_samples=args.eval_samples)
    )
    print(f"guide {args.guide}: test ELBO {test.elbo:.2f}, log p(x) {test.log_likelihood:.2f} nats "
          f"(gap {test.log_likelihood - test.elbo:.2f}) on {test.num_points} digits")

    az = _arviz()
    idata = posterior_inference_data(model, guide, x_test[args.index : args.index + 1], num_samples=args.num_samples)
    khat, ess = idata.posterior.attrs["pareto_k"], idata.posterior.attrs["ess"]
    q_summary = az.summary(idata, kind="stats")
    sir_summary = az.summary(idata, group="importance_resampled", kind="stats")
    print(f"\ntest digit {args.index}: q(z|x) draws | importance-resampled draws (~ p(z|x)), K = {args.num_samples}")
    print(q_summary.add_suffix(" q").join(sir_summary.add_suffix(" sir")).round(3).to_string())
    verdict = "good" if khat < 0.5 else ("fair" if khat <= 0.7 else "unreliable")
    print(f"PSIS k-hat {khat:.3f} ({verdict}), ESS {ess:.1f} of {args.num_samples}")

    import matplotlib

    matplotlib.use("Agg")  # the figure goes to a file; never ask for a display
    import matplotlib.pyplot as plt

    fig, rows = plt.subplots(2, args.latent_dim, figsize=(2.6 * args.latent_dim, 5), sharex="col", squeeze=False)
    for row, group in zip(rows, ("posterior", "importance_resampled")):
        with warnings.catch_warnings():
            # ArviZ 0.23 calls a matplotlib helper in a way matplotlib 3.11 deprecates (alias_mapping as a dict);
            # the plot is unaffected, and the fix belongs in ArviZ.
            warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping", category=DeprecationWarning)
            az.plot_posterior(idata, group=group, var_names=["z"], ax=row, hdi_prob=0.94, textsize=8)
        row[0].set_ylabel("q(z|x)" if group == "posterior" else "resampled")
    fig.suptitle(f"guide {args.guide}, test digit {args.index}: k-hat {khat:.2f}, ESS {ess:.0f}/{args.num_samples}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"saved {args.out}")
    return {
        "train_loss": result.final_loss,
        "khat": float(khat),
        "ess": float(ess),
        "elbo": test.elbo,
        "log_likelihood": test.log_likelihood,
        "ess_fraction": float(ess) / args.num_samples,
    }


if __name__ == "__main__":
    main()
