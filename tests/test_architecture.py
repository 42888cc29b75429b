"""The import graph keeps the layout's shape: the rules of docs/import_rules.txt, no circles.

The rules file is the "who may import whom" table of the intended layout; each library part may
import only the parts its line names (lazy imports inside functions count too). The exceptions
listed there are the known ones the layout move removes; a new breach or a new import circle,
between modules or between parts, fails here.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "import_rules.txt"
ENTRY_POINTS = ("train", "test", "pretrain_fast_headers", "transfer_headers")
SKIP = {"tests", ".venv", ".git", "demo_out", "demo_data", "runs"}


def read_rules(path: Path = RULES):
    """(allowed, forbidden, exceptions): part -> set of parts; part -> forbidden names;
    set of (file, module prefix)."""
    allowed, forbidden, exceptions = {}, {}, set()
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("allow "):
            left, arrow, right = line[len("allow "):].partition("->")
            assert arrow, f"{path}:{lineno}: expected 'allow FILE -> MODULE'"
            exceptions.add((left.strip(), right.strip()))
            continue
        part, colon, rest = line.partition(":")
        assert colon, f"{path}:{lineno}: expected 'PART: PARTS...'"
        words = rest.split()
        allowed[part.strip()] = {w for w in words if not w.startswith("-") and w != "none"}
        forbidden[part.strip()] = {w[1:] for w in words if w.startswith("-")}
    return allowed, forbidden, exceptions


def project_modules() -> dict:
    """Dotted module name -> file, for every project .py outside tests."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path):
    """Every absolute import of a file, as dotted names (``from a import b`` gives ``a.b``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def resolve(name: str, modules: dict):
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def part_of(module: str) -> str:
    head = module.split(".")[0]
    return "entry" if head in ENTRY_POINTS else head


def import_graph(modules: dict) -> dict:
    graph = defaultdict(set)
    for name, path in modules.items():
        for imported in imported_names(path):
            target = resolve(imported, modules)
            if target and target != name:
                graph[name].add(target)
    return graph


def breaches(graph: dict, modules: dict, rules) -> list:
    allowed, forbidden, exceptions = rules
    out = []
    for source, targets in graph.items():
        part = part_of(source)
        if part not in allowed:
            out.append(f"{source}: part {part!r} has no line in {RULES.name}")
            continue
        rel = str(modules[source].relative_to(ROOT))
        for target in sorted(targets):
            other = part_of(target)
            ok = other == part or "*" in allowed[part] or other in allowed[part]
            ok = ok and other not in forbidden[part] and not any(
                target == f or target.startswith(f + ".") for f in forbidden[part])
            if not ok and not any(rel == f and (target + ".").startswith(p + ".")
                                  for f, p in exceptions):
                out.append(f"{rel} imports {target} ({part} -> {other})")
    return out


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


FAMILIES = ("models.dsfd", "models.yunet", "models.retinaface")


def family_of(module: str):
    return next((f for f in FAMILIES if module == f or module.startswith(f + ".")), None)


def test_rules_file_names_every_part():
    allowed, _, _ = read_rules()
    parts = {part_of(m) for m in project_modules()}
    assert parts <= set(allowed), parts - set(allowed)


def test_no_import_breaks_a_rule():
    modules = project_modules()
    bad = breaches(import_graph(modules), modules, read_rules())
    assert not bad, "\n".join(bad)


def test_no_import_circle_between_modules():
    found = cycles(import_graph(project_modules()))
    assert not found, found


def test_only_the_registry_imports_the_families():
    """A family folder imports no other family and not the registry; outside models/ and
    inside it, only models/registry.py imports a family (everything else asks the registry)."""
    graph = import_graph(project_modules())
    bad = []
    for source, targets in graph.items():
        if part_of(source) not in ("models",):
            continue
        for target in targets:
            home, other = family_of(source), family_of(target)
            if home and (target == "models.registry" or (other and other != home)):
                bad.append(f"{source} imports {target}")
            if other and not home and source != "models.registry":
                bad.append(f"{source} imports {target}: only models.registry imports a family")
    assert not bad, "\n".join(bad)


def test_no_import_circle_between_parts():
    graph = import_graph(project_modules())
    parts = defaultdict(set)
    for source, targets in graph.items():
        parts[part_of(source)] |= {part_of(t) for t in targets} - {part_of(source)}
    assert not cycles(parts), cycles(parts)


def test_checker_catches_a_breach_and_a_circle(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("utils: none\ndata: utils\n")
    modules = {"utils.a": ROOT / "utils" / "a.py", "data.b": ROOT / "data" / "b.py"}
    graph = {"utils.a": {"data.b"}, "data.b": {"utils.a"}}
    assert breaches(graph, modules, read_rules(rules)) == [
        "utils/a.py imports data.b (utils -> data)"]
    assert cycles(graph) == [["data.b", "utils.a"]]


def test_old_import_paths_resolve_to_the_moved_modules_and_nothing_uses_them():
    """utils/moved.py keeps the paths from before the layout move importable (the same module
    objects, with a DeprecationWarning); no file of the project, tests included, uses one."""
    import importlib
    import sys
    import warnings

    from utils.moved import MOVED
    modules = project_modules()
    for old, new in MOVED.items():
        assert new in modules, f"{old} -> {new}: no such module"
        assert old not in modules, f"{old} exists again beside its alias"
    users = []
    for path in [*ROOT.rglob("*.py")]:
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP - {"tests"} or rel.name == "test_architecture.py":
            continue
        for name in imported_names(path):
            if any(name == old or name.startswith(old + ".") for old in MOVED):
                users.append(f"{rel} imports {name}")
    assert not users, "\n".join(users)
    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert importlib.import_module(old) is importlib.import_module(new), old
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   for w in caught), old


def test_documented_onnx_runner_names_still_resolve():
    import warnings

    import models.onnx_runner as runner
    from models.yunet.onnx import YuNetDecoder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runner.YuNetDecoder is YuNetDecoder
    assert caught and issubclass(caught[0].category, DeprecationWarning)
    with pytest.raises(AttributeError, match="no attribute 'DECODERS'"):
        runner.DECODERS
