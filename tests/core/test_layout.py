"""The library's layout: sub-packages are the pipeline's stages and import one way only
(core < data < model < compress < eval < train < submit < bench), with no import cycle between
modules, function-level imports counted. Function-level imports are for heavy optional
dependencies only, never for golf's own modules."""
import ast
from pathlib import Path

import pytest

GOLF = Path(__file__).resolve().parents[2] / "golf"
ORDER = ("core", "data", "model", "compress", "eval", "train", "submit", "bench")


def _module_name(path: Path) -> str:
    rel = path.relative_to(GOLF.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(golf module imported, at function level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n == "golf" or n.startswith("golf."):
                out.append((n, id(node) not in top))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = {_module_name(p): p for p in GOLF.rglob("*.py")}
    graph, lazy = {}, set()
    for name, path in mods.items():
        deps = set()
        for target, is_lazy in _imports(path):
            while target not in mods and "." in target:  # `from golf.x import name`: the module
                target = target.rsplit(".", 1)[0]
            if target in mods and target != name and target != "golf":
                deps.add(target)
                if is_lazy:
                    lazy.add(f"{name} -> {target}")
        graph[name] = deps
    return graph, sorted(lazy)


def _stage(mod: str) -> int:
    parts = mod.split(".")
    return ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in ORDER else -1


def test_every_module_is_in_a_stage_package():
    graph, _ = _graph()
    loose = [m for m in graph if m != "golf" and _stage(m) < 0]
    assert not loose, f"modules outside {ORDER}: {loose}"


def test_packages_import_one_way():
    graph, _ = _graph()
    back = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if _stage(b) > _stage(a)]
    assert not back, "imports against the order " + " < ".join(ORDER) + ":\n" + "\n".join(sorted(back))


def test_no_import_cycle():
    graph, _ = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_level_imports_of_golf_modules():
    _, lazy = _graph()
    assert not lazy, "function-level imports of golf modules (import at the top):\n" + "\n".join(sorted(set(lazy)))


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The checker itself: a planted cycle and a planted back-import are found."""
    pkg = tmp_path / "golf"
    for sub, body in (("core/a.py", "from golf.model.b import x\n"), ("model/b.py", "def f():\n    from golf.core.a import y\n")):
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(body)
    monkeypatch.setitem(globals(), "GOLF", pkg)
    graph, lazy = _graph()
    assert graph == {"golf.core.a": {"golf.model.b"}, "golf.model.b": {"golf.core.a"}}
    assert lazy == ["golf.model.b -> golf.core.a"]
    with pytest.raises(AssertionError, match="golf.core.a -> golf.model.b"):
        test_packages_import_one_way()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle()
