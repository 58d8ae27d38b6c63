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
            cycles.append(stack[stack.index(node):] + [node])
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
