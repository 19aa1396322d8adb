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
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        yaml.safe_load(path.read_text())
        load_config(path)
