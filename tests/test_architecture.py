"""The package's structure: imports point one way, no import cycles, short functions, private Pyro in one place.

Layers, from the bottom (a module may import from its own layer or below, never above):

1. building blocks: errors, schema, registry, compat, nets, pixelcnn, autoregressive, families, likelihoods, data,
   labelled, runs
2. what a model and a guide are: contract, programs, heads, spec, models, guides, compile
3. inference: estimators, checks, fit and its training state, evaluation, diagnostics, objectives
4. experiments: config, experiment, stages, compare, plots, show
5. the command line: cli (the only module that prints)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppl_vae"

LAYERS = {
    1: ["errors", "schema", "registry", "compat", "nets", "families", "likelihoods", "pixelcnn", "autoregressive", "datafiles", "batches", "data",
        "labelled", "runs"],
    2: ["contract", "programs", "heads", "spec", "models", "guides", "compile"],
    3: ["inference"],
    4: ["config", "experiment", "stages", "stacked", "compare", "plots", "show", "explore", "report"],
    5: ["cli"],
}
#: functions longer than MAX_LINES that are declarative (a table or an argument parser), with the reason
DECLARATIVE = {
    "ppl_vae.cli.parser.build_parser": "the argparse declaration of every command and option",
}
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> set[str]:
    """The ppl_vae modules that ``module`` imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int:
    if module == "ppl_vae":
        return 6  # the package's public API re-exports everything
    top = module.split(".")[1]
    return next(level for level, names in LAYERS.items() if top in names)


def test_every_module_has_a_layer():
    for module in MODULES:
        assert _layer(module) in LAYERS or module == "ppl_vae", module


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def test_no_import_cycles_counting_imports_inside_functions():
    # A package's __init__ importing its own submodules is not a cycle; every other edge counts.
    def edges(module):
        own = _package_of(module)
        return [t for t in GRAPH[module] if not (module == own and t.startswith(own + "."))
                and not (t == own or t == "ppl_vae")]

    state: dict[str, str] = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "active", "import cycle: " + " -> ".join(path[path.index(module):] + [module])
        state[module] = "active"
        for target in edges(module):
            visit(target, path + [module])
        state[module] = "done"

    for module in MODULES:
        visit(module, [])


def test_imports_point_down_the_layers():
    wrong = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if target != "ppl_vae" and _layer(target) > _layer(module)
    ]
    assert wrong == []


def test_no_function_is_longer_than_sixty_lines_unless_declarative():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # the body, without the docstring
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                name = f"{module}.{node.name}"
                if lines > MAX_LINES and name not in DECLARATIVE:
                    long.append(f"{name}: {lines} lines")
    assert long == []


PRIVATE_PYRO = ("_PYRO_STACK", "._get_trace", "._params", "pyro.ops.provenance", "pyro.infer.util",
                "pyro.poutine.util", "pyro.distributions.util", "pyro.util", "pyro.poutine.runtime",
                '"_differentiable_loss"', "_pyro_model_id")


@pytest.mark.parametrize("name", PRIVATE_PYRO)
def test_private_pyro_is_used_in_the_compatibility_module_only(name):
    users = [m for m, path in MODULES.items() if m != "ppl_vae.compat" and name in path.read_text()]
    assert users == [], f"{name} outside ppl_vae/compat.py"


def test_only_the_command_line_prints():
    printing = []
    for module, path in MODULES.items():
        if module == "ppl_vae.cli" or module.startswith("ppl_vae.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{module}:{node.lineno}")
    assert printing == []


def test_the_data_plate_is_named_in_one_place():
    literal = [m for m, path in MODULES.items() if 'plate("data"' in path.read_text() or "plate('data'" in path.read_text()]
    assert literal == []
