"""Train and evaluate a VAE on the offline 8x8 digits with the Python API.

This is the quick start without the CLI: load data, build a model and a guide
from the registries, train them with :func:`ppl_vae.fit`, evaluate the test
ELBO and the importance-sampled log-likelihood, and save a grid of samples.

    python examples/vae_digits.py --epochs 40 --out digits_samples.png
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import ppl_vae
from ppl_vae.plots import plot_samples


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-train", type=int, default=None, help="limit the training set (quick runs)")
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples K for log p(x)")
    parser.add_argument("--out", default="digits_samples.png", help="where to save the sample grid")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    data = ppl_vae.load_dataset(ppl_vae.DataConfig(name="digits", binarize="dynamic", num_train=args.num_train))
    model = ppl_vae.make_model("vae", data.x_shape, ppl_vae.VAEConfig(latent_dim=8, hidden_dims=(128,)), seed=0)
    guide = ppl_vae.make_guide("amortized", model, ppl_vae.AmortizedGuideConfig(hidden_dims=(128,)), seed=1)
    result = ppl_vae.fit(
        model,
        guide,
        data,
        estimator="trace",
        optim=ppl_vae.OptimConfig(lr=3e-3),
        train=ppl_vae.TrainConfig(epochs=args.epochs, batch_size=32, device=args.device, val_every=0),
    )
    test = ppl_vae.evaluate(model, guide, data.x_test.to(result.device), config=ppl_vae.EvalConfig(num_samples=args.num_samples))
    print(f"test ELBO {test.elbo:.2f} +- {test.elbo_stderr:.2f}, log p(x) {test.log_likelihood:.2f} +- {test.log_likelihood_stderr:.2f} nats")
    plot_samples(model, 64, data.image_shape, args.out, x_shape=data.x_shape)
    print(f"saved {args.out}")
    return {"train_loss": result.final_loss, "elbo": test.elbo, "log_likelihood": test.log_likelihood}


if __name__ == "__main__":
    main()
