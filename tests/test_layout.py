"""The package's shape: no import circles (counting imports inside functions too)."""

import ast

from conftest import ROOT


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = [p for top in ("pipeline", "targets") for p in (ROOT / top).rglob("*.py")]
    names = {_module_name(p) for p in files}
    graph = {}
    for p in files:
        me, deps = _module_name(p), set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {f for f in found if f in names and f != me and not me.startswith(f + ".")}
        graph[me] = deps
    return graph


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    cycles = []

    def visit(node, stack, done):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, stack + [node], done)
        done.add(node)

    done = set()
    for module in sorted(graph):
        visit(module, [], done)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_lower_layer_targets_imports_nothing_from_pipeline():
    """targets/ is the layer below pipeline/ (families, runtimes, runners, the post-training choice): not one
    import of pipeline in it, at module level or inside a function."""
    found = []
    for p in sorted((ROOT / "targets").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{p.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "pipeline"]
    assert not found, "\n".join(found)


def _docstrings(tree) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def test_benchmarks_use_the_api_not_sys_path_patches_cache_paths_or_each_other():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__", "common"}
    found = []
    for p in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(p.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            where = f"benchmarks/{p.name}:{getattr(node, 'lineno', '?')}"
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("insert", "append")
                and ast.unparse(node.value) == "sys.path"
            ):
                found.append(f"{where}: sys.path.{node.attr}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and ".cache" in node.value
            ):
                found.append(f"{where}: a path into the cache ({node.value!r})")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                )
                siblings = [
                    n
                    for n in names
                    if n.split(".")[0] in scripts or (n.startswith("benchmarks.") and n.split(".")[1] in scripts)
                ]
                if siblings or (isinstance(node, ast.ImportFrom) and node.level):
                    found.append(f"{where}: imports a sibling script ({', '.join(siblings) or 'relative'})")
    assert not found, "\n".join(found)
