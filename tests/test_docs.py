"""The README's commands stay in step with CI and the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ppl_vae.cli import build_parser
from ppl_vae.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _ci_commands():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return {lines[i - 1].strip("# ").strip(): lines[i + 0].strip() for i in range(1, len(lines)) if lines[i - 1].startswith("# README:")}


def test_ci_runs_the_readme_install_and_test_commands():
    commands = _ci_commands()
    assert set(commands) == {"README: install", "README: test"}
    for command in commands.values():
        assert f"\n{command}\n" in README, f"{command!r} from .ci/run is not in the README"


def test_readme_configs_exist_and_parse():
    for path in sorted(set(re.findall(r"configs/[\w.]+\.yaml", README))):
        assert (ROOT / path).is_file(), path
        load_config(ROOT / path)


def test_readme_cli_subcommands_exist():
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    used = set(re.findall(r"^ppl-vae (\w[\w-]*)", README, flags=re.M))
    assert used - {"--help"} <= subcommands


def test_shipped_configs_parse():
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        yaml.safe_load(path.read_text())
        load_config(path)


DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_docs_configs_exist_and_parse():
    for doc in DOCS:
        for path in sorted(set(re.findall(r"configs/[\w/.]+\.yaml", doc.read_text()))):
            assert (ROOT / path).is_file(), f"{doc.name} names {path}, which does not exist"
            load_config(ROOT / path)


def test_docs_python_snippets_run():
    for doc in DOCS:
        for snippet in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
            exec(compile(snippet, str(doc), "exec"), {})


def test_define_your_own_model_walkthrough(tmp_path, monkeypatch, capsys):
    # The page's commands, in order, with a short training run.
    from ppl_vae.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "configs" / "custom_model.yaml")
    assert main(["show", config]) == 0
    short = ["--set", "train.epochs=2", "--set", "train.progress=false", "--set", "data.num_train=200"]
    assert main(["fit", config, "--name", "custom_model", *short]) == 0
    assert main(["evaluate", "runs/custom_model", "--num-samples", "20"]) == 0
    assert main(["sample", "runs/custom_model", "-n", "16"]) == 0
    assert (tmp_path / "runs" / "custom_model" / "evaluation.json").is_file()
    assert "log p(x) (importance)" in capsys.readouterr().out
