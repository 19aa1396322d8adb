"""One self-contained HTML page per run or comparison: ``ppl-vae report DIR`` writes ``DIR/report.html``.

The page holds everything it shows: every PNG under the folder is embedded as a base64 data URI, the tables
and the config are inline, and there is no script, no stylesheet link and no external URL, so it opens in
any browser, offline, and can be mailed or archived as one file.

- **A run directory** (``config.yaml``): a summary of the training (epochs, last train loss and validation
  ELBO), the evaluation tables (``evaluation*.json``, from ``ppl-vae evaluate``), the learning curves
  (``curves.png``, or drawn from ``metrics.jsonl`` when absent), samples and reconstructions (and M2's class
  grid and analogies), the exploration figures of ``ppl-vae explore`` (``explore/``), any other PNG in the
  folder (an M1+M2 run's first stage in ``m1/``), the metrics per epoch and the config.
- **A comparison folder** (``comparison.md``/``.csv``/``.png`` from ``ppl-vae compare-estimators`` or
  ``compare-guides``): the comparison table, its figure, and per variant its row, figures and config.

Nothing is computed from a model here: a figure the run lacks is named with the command that draws it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Sequence

from .errors import RunDirError
from .runs import RunDir, atomic_write_bytes

__all__ = ["write_report", "REPORT"]

#: the file name of the page, in the folder it reports on
REPORT = "report.html"

#: figures of a run, in the order the page shows them, with a caption
RUN_FIGURES = {
    "samples.png": "samples: means of p(x|z) for z drawn from the prior",
    "reconstructions.png": "test images (odd rows) and their reconstructions (even rows)",
    "denoising.png": "denoising: clean test images, corrupted, and reconstructed from the corrupted ones",
    "classes.png": "conditional generation: a style z per row, a class y per column",
    "analogies.png": "analogies: a test image's style decoded with every class",
}
EXPLORE_FIGURES = {
    "traverse.png": "latent traversals: one unit swept per row, the others fixed",
    "interpolate.png": "interpolations between test images: linear and spherical in z, and in pixels",
    "map.png": "the test points' posterior means in 2-D, coloured by label",
    "manifold.png": "the learned manifold: a grid of the prior's quantiles, decoded",
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; } code, pre { background: #f6f6f6; }
pre { padding: .8em; overflow-x: auto; font-size: .85em; } .note { color: #666; font-style: italic; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if 1 <= abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _figure(path: Path, root: Path, caption: str | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    text = f"<code>{_e(name)}</code>" + (f": {_e(caption)}" if caption else "")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(name)}"><figcaption>{text}</figcaption></figure>'


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = "".join(f'<th class="text">{_e(c)}</th>' if i == 0 else f"<th>{_e(c)}</th>" for i, c in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cls = "" if numeric else ' class="text"'
            cells.append(f"<td{cls}>{_e(_number(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _key_values(mapping: dict) -> str:
    return _table([{"quantity": k, "value": v} for k, v in mapping.items()], ["quantity", "value"])


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n" + "\n".join(sections) + '\n<p class="note">written by ppl-vae report</p>\n</body>\n</html>\n'
    )


# -- a run ----------------------------------------------------------------------------------------------------


def _summary(run: RunDir, metrics: list[dict]) -> str:
    config = run.read_config() if run.config_path.is_file() else {}
    facts = {
        "model": (config.get("model") or {}).get("name", "?"),
        "guide": (config.get("guide") or {}).get("name", "?"),
        "data": (config.get("data") or {}).get("name", "?"),
        "estimator": (config.get("estimator") or {}).get("name", "?"),
        "epochs done": len(metrics),
        "epochs configured": (config.get("train") or {}).get("epochs", "?"),
    }
    last = metrics[-1] if metrics else {}
    for key, label in (("train_loss", "last train loss (nats/point)"), ("val_elbo", "last validation ELBO (nats/point)"),
                       ("test_accuracy", "last test accuracy of q(y|x)")):
        if key in last:
            facts[label] = last[key]
    seconds = sum(m.get("epoch_time_s", 0.0) for m in metrics)
    if seconds:
        facts["training time (s, sum of epochs)"] = round(seconds, 1)
    return "<h2>Summary</h2>" + _key_values(facts)


def _evaluations(root: Path) -> str:
    files = sorted(root.glob("evaluation*.json"))
    if not files:
        return "<h2>Evaluation</h2>" + _note(f"not evaluated yet: ppl-vae evaluate {root}")
    parts = ["<h2>Evaluation</h2>"]
    for path in files:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            parts.append(_note(f"{path.name} cannot be read: {err}"))
            continue
        parts.append(f"<h3><code>{_e(path.name)}</code></h3>" + _key_values(values if isinstance(values, dict) else {"value": values}))
    return "".join(parts)


def _curves(root: Path, metrics: list[dict], shown: set[Path]) -> str:
    path = root / "curves.png"
    if path.is_file():
        shown.add(path)
        return "<h2>Learning curves</h2>" + _figure(path, root, "training loss and validation -ELBO per epoch")
    if not metrics:
        return "<h2>Learning curves</h2>" + _note("no metrics.jsonl: the run has not finished an epoch")
    from .plots import plot_learning_curves

    with tempfile.TemporaryDirectory() as tmp:  # drawn for the page only; the run is left as it is
        drawn = plot_learning_curves(metrics, Path(tmp) / "curves.png")
        return "<h2>Learning curves</h2>" + _figure(drawn, Path(tmp), "drawn from metrics.jsonl (the run has no curves.png)")


def _named_figures(folder: Path, root: Path, captions: dict, shown: set[Path]) -> list[str]:
    out = []
    for name, caption in captions.items():
        if (folder / name).is_file():
            shown.add(folder / name)
            out.append(_figure(folder / name, root, caption))
    return out


def _explore_section(root: Path, shown: set[Path]) -> str:
    folder = root / "explore"
    figures = _named_figures(folder, root, EXPLORE_FIGURES, shown)
    for path in sorted(folder.glob("attribute_*.png")):
        shown.add(path)
        what = path.stem[len("attribute_"):].replace("_to_", " -> ").replace("_", " ")
        figures.append(_figure(path, root, f"attribute vector '{what}' added to test images' codes at several strengths"))
    if not figures:
        return "<h2>Inside the model</h2>" + _note(f"no exploration figures yet: ppl-vae explore {root} all")
    return "<h2>Inside the model</h2>" + "".join(figures)


def _others(root: Path, shown: set[Path], title: str = "Other figures") -> str:
    rest = [p for p in sorted(root.rglob("*.png")) if p not in shown]
    shown.update(rest)
    return f"<h2>{_e(title)}</h2>" + "".join(_figure(p, root) for p in rest) if rest else ""


def _metrics_table(metrics: list[dict]) -> str:
    if not metrics:
        return ""
    columns = [c for c in dict.fromkeys(k for m in metrics for k in m) if c != "lr" or len({m.get("lr") for m in metrics}) > 1]
    return f"<h2>Metrics per epoch</h2><details><summary>{len(metrics)} epochs</summary>{_table(metrics, columns)}</details>"


def _config_section(path: Path) -> str:
    if not path.is_file():
        return ""
    return f"<h2>Config</h2><p><code>{_e(path.name)}</code></p><pre>{_e(path.read_text())}</pre>"


def _run_page(root: Path) -> tuple[str, list[str]]:
    run = RunDir(root)
    metrics = run.read_metrics() if run.metrics_path.is_file() else []
    shown: set[Path] = set()
    sections = [_summary(run, metrics), _evaluations(root), _curves(root, metrics, shown)]
    samples = _named_figures(root, root, RUN_FIGURES, shown)
    sections.append("<h2>Samples and reconstructions</h2>" + ("".join(samples) or _note(f"not drawn yet: ppl-vae sample {root}")))
    sections += [_explore_section(root, shown), _others(root, shown), _metrics_table(metrics), _config_section(run.config_path)]
    return f"Run {root.resolve().name}", sections


# -- a comparison ---------------------------------------------------------------------------------------------


def _comparison_rows(root: Path) -> list[dict]:
    path = root / "comparison.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value not in ("", None) and key != "variant" else value
            except ValueError:
                pass
    return rows


def _variant_section(folder: Path, root: Path, shown: set[Path]) -> str:
    parts = [f"<h3><code>{_e(folder.name)}</code></h3>"]
    done = folder / "variant.json"
    if done.is_file():
        try:
            row = json.loads(done.read_text()).get("row", {})
        except ValueError:
            row = {}
        if row.get("refused"):
            parts.append(_note(f"refused: {row['refused']}"))
    pngs = [p for p in sorted(folder.rglob("*.png")) if p not in shown]
    shown.update(pngs)
    parts += [_figure(p, root) for p in pngs]
    config = folder / RunDir.CONFIG
    if config.is_file():
        parts.append(f"<details><summary>config</summary><pre>{_e(config.read_text())}</pre></details>")
    return "".join(parts)


def _comparison_page(root: Path) -> tuple[str, list[str]]:
    shown: set[Path] = set()
    rows = _comparison_rows(root)
    sections = ["<h2>Comparison</h2>"]
    if rows:
        sections.append(_table(rows))
    elif (root / "comparison.md").is_file():
        sections.append(f"<pre>{_e((root / 'comparison.md').read_text())}</pre>")
    if (root / "comparison.png").is_file():
        shown.add(root / "comparison.png")
        sections.append(_figure(root / "comparison.png", root, "learning curves of every variant and a summary per variant"))
    variants = [p for p in sorted(root.iterdir()) if p.is_dir() and ((p / "variant.json").is_file() or (p / RunDir.CONFIG).is_file())]
    if variants:
        sections.append("<h2>Variants</h2>" + "".join(_variant_section(v, root, shown) for v in variants))
    sections.append(_others(root, shown))
    return f"Comparison {root.resolve().name}", sections


def is_comparison(path: Path) -> bool:
    """Whether ``path`` is the output folder of a comparison."""
    return any((path / name).is_file() for name in ("comparison.md", "comparison.csv"))


def write_report(path: str | Path) -> Path:
    """Write ``report.html`` into a run directory or a comparison folder (see the module's docstring).

    :raises RunDirError: for a folder that is neither.
    """
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder: give a run directory or the output folder of a comparison")
    if is_comparison(root):
        title, sections = _comparison_page(root)
    elif (root / RunDir.CONFIG).is_file():
        title, sections = _run_page(root)
    else:
        raise RunDirError(f"{root} is neither a run directory (it has no {RunDir.CONFIG}) nor a comparison folder "
                          "(no comparison.md)")
    text = _page(title, [s for s in sections if s]).encode("utf-8")
    out = root / REPORT
    atomic_write_bytes(out, lambda f: f.write(text))
    return out
