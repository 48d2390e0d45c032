"""The house rules (docs/architecture.md), checked on the source: no import circle, Ray only in
its wrapper modules, ``jigclu`` never importing ``tune`` (the CLI aside) nor ``benchmarks``, small files,
no ``sys.path`` edits in ``benchmarks/`` or ``tests/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jigclu", "tune")
# the modules allowed to import Ray: the wrappers around Ray Train, Ray Tune and the cluster launcher
RAY_WRAPPERS = {"jigclu.ray_train", "jigclu.ray_session", "jigclu.ray_preempt", "jigclu.ray_data", "jigclu.ray_data_loop", "tune.sweep", "tune.train_trial", "tune.live", "tune.waiting", "tune.searcher", "tune.schedulers", "tune.repeats", "tune.promotion", "jigclu.cluster.launcher", "jigclu.cluster.kuberay"}
MAX_LINES = 400


def _name(path: Path) -> str:
    """The module name of ``path`` (a file under the repository root)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {_name(path): path for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module this file imports (at the top or inside a function), as full names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return out


MODULES = _modules()
GRAPH = {name: _imports(path, name, MODULES) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    """Internal modules ``name`` depends on (a package import counts as its ``__init__``)."""
    return {dep for dep in GRAPH[name] if dep in MODULES and dep != name}


def test_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(_internal(node)):
            if node.startswith(dep + ".") and MODULES[dep].name == "__init__.py":
                continue  # a submodule importing its own package's re-exports is no circle
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


def test_ray_is_imported_only_by_its_wrappers():
    offenders = sorted(name for name, deps in GRAPH.items()
                       if any(d == "ray" or d.startswith("ray.") for d in deps) and name not in RAY_WRAPPERS)
    assert not offenders, f"modules importing Ray outside the wrappers: {offenders}"


def test_jigclu_and_tune_do_not_import_the_benchmarks():
    """``benchmarks/`` is a package of the checkout, not of the install (``montage_check`` and
    ``cluster_box``, harness both, live there)."""
    offenders = sorted(name for name, deps in GRAPH.items()
                       if any(d == "benchmarks" or d.startswith("benchmarks.") for d in deps))
    assert not offenders, f"modules of the install importing benchmarks: {offenders}"


def test_jigclu_does_not_import_tune_except_the_cli():
    offenders = sorted(name for name, deps in GRAPH.items()
                       if name.startswith("jigclu") and name != "jigclu.cli"
                       and any(d == "tune" or d.startswith("tune.") for d in deps))
    assert not offenders, f"jigclu modules importing tune: {offenders}"


def test_benchmarks_do_not_import_the_cli():
    offenders = []
    for name, path in _modules(("benchmarks",)).items():
        deps = _imports(path, name, MODULES)
        if any(d.startswith("jigclu.cli") for d in deps):
            offenders.append(name)
    assert not offenders, f"benchmarks importing the CLI: {offenders}"


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys")


def _path_edits(path: Path) -> list[str]:
    """Where ``path`` edits the import path: ``sys.path.insert/append/...``, an assignment to
    ``sys.path`` (or an item of it), pytest's ``syspath_prepend``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and (node.attr == "syspath_prepend" or _is_sys_path(node.value)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets):
                found.append(f"{node.lineno}: assignment to sys.path")
    return found


def test_benchmarks_and_tests_do_not_edit_the_import_path():
    """Benchmark modules import each other as ``benchmarks.<group>.<module>`` and run as ``python -m``;
    tests import them the same way (pytest puts the repository root on the path: ``pythonpath`` in
    pyproject.toml). A ``sys.path`` edit is how a second copy of a module, under another name, sneaks in."""
    offenders = [f"{path.relative_to(ROOT)}:{where}" for folder in ("benchmarks", "tests")
                 for path in sorted((ROOT / folder).rglob("*.py")) for where in _path_edits(path)]
    assert not offenders, f"sys.path edited: {offenders}"


def test_files_hold_one_idea():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_one_training_loop():
    loops = []
    for path in sorted((ROOT / "jigclu" / "trainers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == "epoch":
                loops.append(f"{path.name}:{node.lineno}")
    assert loops == [loops[0]] and loops[0].startswith("loop.py"), loops


def test_one_module_names_the_sweep_files():
    """The sweep directory's file names are written once, in tune/layout.py; the runner and the
    report import them (a second spelling is how a renamed file goes unread)."""
    from tune import layout

    names = {value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str)}
    assert {"sampled.json", "test_scores.json", "train_checkpoint.json"} <= names
    offenders = []
    for module, path in MODULES.items():
        if module == "tune.layout":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, f"sweep file names spelled outside tune/layout.py: {offenders}"
