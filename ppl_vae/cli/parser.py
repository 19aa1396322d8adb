"""The command line's arguments: every command and option of ``ppl-vae``, and their help texts."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from .. import __version__
from ..errors import PplVaeError



EXAMPLES = """\
examples:
  ppl-vae fit configs/vae_digits.yaml                      # offline quick start, under a minute
  ppl-vae show configs/specs/m2.yaml                       # sites, shapes and dependencies of a spec
  ppl-vae fit configs/vae_mnist.yaml --data-dir DATA --set train.epochs=5
  ppl-vae fit --resume runs/vae_digits-20261122-101500     # continue an interrupted run
  ppl-vae evaluate runs/vae_digits-20261122-101500 --num-samples 5000
  ppl-vae sample runs/vae_digits-20261122-101500 -n 64
  ppl-vae explore runs/vae_digits-20261122-101500 all      # traversals, interpolations, latent map, attribute vectors
  ppl-vae report runs/vae_digits-20261122-101500           # one self-contained report.html
"""

EXPLORE_EXAMPLES = """\
examples:
  ppl-vae explore RUN all                                  # every view, into RUN/explore/
  ppl-vae explore RUN traverse --top-k 5 --base prior      # the 5 most used units around the prior mean
  ppl-vae explore RUN interpolate --pairs 0:1,3:8
  ppl-vae explore RUN map --methods pca,tsne --points 5000
  ppl-vae explore RUN attribute --class 1:7                # from the mean code of 1s to that of 7s
  ppl-vae explore RUN attribute --thickness                # thick minus thin digits, measured from the pixels
  ppl-vae explore RUN attribute --labels smiling.npy       # any 0/1 attribute, one per test image
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as the CLI reports every error: one line, exit status 2
    (rather than the usage block and a SystemExit)."""

    def error(self, message: str) -> NoReturn:
        raise PplVaeError(f"{message} (see {self.prog} --help)")


def _device(value: str) -> str:
    """A ``--device`` value, checked as the command line is read (before any data or checkpoint is loaded)."""
    from ..inference.training import DEVICES

    if value in DEVICES or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICES)} or cuda:N, got {value!r}")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="folder holding the datasets (default: $PPL_VAE_DATA, else ~/.cache/ppl_vae)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae",
        description="Variational autoencoders as Pyro programs: train, evaluate and sample.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ppl-vae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fit", help="train a model and guide from a YAML config", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (YAML); omit with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override any config value, e.g. --set train.epochs=5, --set model.latents.z.dim=16 (a "
                        "list item by name or index), --set m1.train.epochs=50 (an M1+M2 config's first stage); repeatable")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--out-dir", help="parent folder of the run directory (default: run.out_dir, 'runs')")
    p.add_argument("--name", help="run directory name (default: <config name>-<timestamp>)")
    _add_data_dir(p)
    p.add_argument("--no-figures", action="store_true", help="skip the sample and learning-curve PNGs after training")

    p = sub.add_parser("show", help="print a config's compiled model and guide: sites, shapes, dependencies")
    p.add_argument("config", help="experiment config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override any config value, e.g. model.latents.z.dim=16 (repeatable)")
    p.add_argument("--graph", default="model.png", help="where to draw the model graph when graphviz is installed (default: model.png)")
    _add_data_dir(p)

    for kind, flag, example in (
        ("estimators", "--estimators", "trace,tracegraph:avg,tracegraph:nn,enum,iwae:5"),
        ("guides", "--heads", "normal,fullcov,iaf:4,planar:8 (or a guide by import path, my_models:guide)"),
    ):
        p = sub.add_parser(f"compare-{kind}", help=f"train one config with several {kind} side by side")
        p.add_argument("config", help="experiment config (YAML)")
        p.add_argument(flag, dest="variants", required=True, help=f"comma-separated list, e.g. {example}")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a config value for every variant (repeatable)")
        p.add_argument("--out", help="output folder (default: runs/compare-<kind>-<config>-<timestamp>); "
                       "rerun with the same folder to continue an interrupted comparison")
        p.add_argument("--num-samples", "-k", type=int, default=1000, help="importance samples K for log p(x) (default: 1000)")
        p.add_argument("--eval-points", type=int, default=1000, help="test points to evaluate (default: 1000; 0 = all)")
        if kind == "estimators":
            p.add_argument("--grad-draws", type=int, default=50, help="gradient draws per variance measurement (default: 50)")
        _add_data_dir(p)

    p = sub.add_parser("evaluate", help="test ELBO and importance-sampled log p(x) of a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num-samples", "-k", type=int, help="importance samples K per data point (default: eval.num_samples)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="which split (default: test)")
    p.add_argument("--max-points", type=int, help="evaluate only the first N points of the split")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    _add_data_dir(p)

    p = sub.add_parser("sample", help="PNG grids of samples and of test-set reconstructions")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: 0)")
    p.add_argument("--out", help="samples PNG (default: RUN_DIR/samples.png); reconstructions go beside it")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    _add_data_dir(p)

    p = sub.add_parser("fit-prior", help="train a PixelCNN prior over a trained VQ-VAE run's codes (saved in RUN_DIR/prior)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained VQ-VAE run")
    for flag, kind, default in (("epochs", int, 20), ("batch-size", int, 64), ("lr", float, 0.003), ("num-layers", int, 4),
                                ("channels", int, 32), ("kernel-size", int, 3), ("seed", int, 0)):
        p.add_argument(f"--{flag}", type=kind, help=f"default: {default}")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    _add_data_dir(p)

    _add_explore(sub)
    p = sub.add_parser("report", help="one self-contained HTML page (DIR/report.html) of a run or a comparison")
    p.add_argument("run_dir", metavar="DIR", help="a run directory, or the --out folder of compare-estimators or compare-guides")
    return parser


def _explore_common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--seed", type=int, default=0, help="seed of any random draw (default: 0)")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto; a CPU is enough)")
    _add_data_dir(p)
    return p


def _add_explore(sub) -> None:
    """``ppl-vae explore RUN VIEW``: a subcommand per view."""
    p = sub.add_parser("explore", help="look inside a trained model: traversals, interpolations, latent map, attribute vectors",
                       description="Draw a view of a trained run into RUN/explore/ (a PNG each).",
                       epilog=EXPLORE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN")
    views = p.add_subparsers(dest="view", metavar="VIEW", required=True)
    v = _explore_common(views.add_parser("traverse", help="sweep each of the most used latent units from -3 to +3 prior sd"))
    v.add_argument("--base", choices=["image", "prior"], default="image",
                   help="sweep around a test image's code or the prior mean (default: image)")
    v.add_argument("--index", type=int, default=0, help="the test image of --base image (default: 0)")
    v.add_argument("--top-k", type=int, default=10, help="the K units with most KL(q||p) (default: 10; 0 = all)")
    v.add_argument("--steps", type=int, default=11, help="images per sweep (default: 11)")
    v.add_argument("--sites", help="comma-separated latent sites to sweep (default: all)")
    v.add_argument("--points", type=int, default=1000, help="test points that rank the units (default: 1000)")
    v = _explore_common(views.add_parser("interpolate", help="linear and spherical paths between test images' codes, and the pixel blend"))
    v.add_argument("--pairs", default="0:1,2:3,4:5", help="pairs of test images I:J, comma-separated (default: 0:1,2:3,4:5)")
    v.add_argument("--steps", type=int, default=10, help="images per path (default: 10)")
    v = _explore_common(views.add_parser("map", help="test points' posterior means in 2-D by label; a 2-D latent's manifold"))
    v.add_argument("--points", type=int, default=2000, help="test points to map (default: 2000)")
    v.add_argument("--methods", help="comma-separated: pca, tsne, umap (default: those installed); a 2-D latent is drawn as it is")
    v.add_argument("--grid", type=int, default=20, help="the manifold of a 2-D latent: N x N images (default: 20)")
    v = _explore_common(views.add_parser("attribute", help="add the vector between mean codes with and without an attribute"))
    which = v.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="classes", metavar="A:B", help="from the mean code of class A to that of B; or B: B against the others")
    which.add_argument("--labels", metavar="FILE", help="a 0/1 attribute per test image (.npy, .txt or .csv)")
    which.add_argument("--thickness", action="store_true", help="stroke thickness: more ink than the class median (see README)")
    v.add_argument("--strengths", default="-1,-0.5,0,0.5,1,1.5,2", help="multiples of the vector, comma-separated (default: -1,-0.5,0,0.5,1,1.5,2)")
    v.add_argument("--rows", type=int, default=6, help="test images to shift (default: 6)")
    _explore_common(views.add_parser("all", help="every view with its defaults"))
