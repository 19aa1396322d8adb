"""The commands that look inside a run: ``explore`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PplVaeError

from .files import _check_writable, _open_run, _writing


def _numbers(text: str, kind, what: str) -> list:
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise PplVaeError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _pairs(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(i), int(j)) for i, j in (item.strip().split(":") for item in text.split(",") if item.strip())]
    except ValueError:
        raise PplVaeError(f"--pairs must be I:J pairs of test images, comma-separated (0:1,2:3), got {text!r}") from None


def _explore_view(exp, out: Path, args: argparse.Namespace):
    """Run the view the command line names, with its options."""
    from .. import explore

    seed = args.seed
    if args.view == "traverse":
        sites = [s.strip() for s in args.sites.split(",") if s.strip()] if args.sites else None
        return explore.traverse(exp, out, base=args.base, index=args.index, top_k=args.top_k or None,
                                steps=args.steps, sites=sites, points=args.points, seed=seed)
    if args.view == "interpolate":
        return explore.interpolate(exp, out, pairs=_pairs(args.pairs), steps=args.steps, seed=seed)
    if args.view == "map":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        return explore.latent_map(exp, out, points=args.points, methods=methods, grid=args.grid, seed=seed)
    if args.view == "attribute":
        attribute = "thickness" if args.thickness else args.labels if args.labels else f"class:{args.classes}"
        strengths = _numbers(args.strengths, float, "--strengths")
        return explore.attribute_vector(exp, out, attribute, strengths=strengths, rows=args.rows, seed=seed)
    return explore.explore_all(exp, out, seed=seed)


def _cmd_explore(args: argparse.Namespace) -> int:
    from ..experiment import load_run

    run = _open_run(args.run_dir)
    out = run.path / "explore"
    _check_writable(out)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    with _writing(out):
        result = _explore_view(exp, out, args)
    for path in result.paths if hasattr(result, "paths") else [result.path]:
        print(f"saved {path}")
    for note in getattr(result, "notes", []):
        print(f"(note: {note})")
    for reason in getattr(result, "skipped", []):
        print(f"(skipped: {reason})")
    print(f"next: ppl-vae report {run.path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    root = Path(args.run_dir)
    if root.is_dir():
        _check_writable(root)
    with _writing(root):
        path = write_report(root)
    print(f"saved {path}")
    return 0
