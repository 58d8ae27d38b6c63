"""The code part of a stage's cache key: the source of the functions that make its output, not whole files.

From a stage's roots (its run function, a target's module, ...) the walk follows every name the code uses
that this project defines (`pipeline`, `targets`): functions, classes, module constants, through imports,
`module.attr` and `self.attr`, and any `.attr` naming a member of the context class every stage is given.
Each definition counts by its syntax tree (`ast.unparse`: comments and formatting do not count), plus each
reached module's top-level statements that run on import. Editing `qat()` then changes the QAT stage's key
and its dependants', never train's. The walk cannot see code reached through names made at run time
(`target.module`, import_module) or a method of an object whose class the code never names (other than the
context's): a stage lists those as roots, as it lists files not named in code (runner scripts run as child
processes, hashed whole). Over-inclusion only costs a rerun, so every doubt includes.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "targets")


def code_hash(roots, context: type | None = None) -> str:
    """`roots`: functions, classes, modules, or file paths relative to the project root."""
    h = hashlib.sha256()
    for label, text in sorted(closure(roots, context).items()):
        h.update(f"{label}\0{text}\0".encode())
    for f in sorted({r for r in roots if isinstance(r, str)}):
        h.update(f.encode() + b"\0" + (ROOT / f).read_bytes())
    return h.hexdigest()[:16]


def closure(roots, context: type | None = None) -> dict[str, str]:
    """The source of every definition the roots (not the files) reach, by `module:name`."""
    done: dict[str, str] = {}
    todo = [_ref(r) for r in roots if not isinstance(r, str)]
    members = _members(context)
    while todo:
        mod, name = todo.pop()
        label = f"{mod}:{name}"
        if label in done or _module(mod) is None:
            continue
        m = _module(mod)
        if name == "*":  # a whole module: every definition in it
            done[label] = ""
            todo += [(mod, n) for n in m.defs]
            continue
        node = m.defs.get(name) or m.member(name)
        if node is None:  # imported from another module (follow it there), or made by a top-level statement
            done[label] = ""
            todo += [t for t in m.imports.get(name.split(".")[0], []) if "." not in name]
            todo.append((mod, "<loose>"))
            continue
        done[label] = _text(mod, name)
        todo.append((mod, "<loose>"))
        todo += _uses(m, node, name, members)
    return {label: text for label, text in done.items() if text}


def _ref(obj) -> tuple[str, str]:
    if inspect.ismodule(obj):
        return obj.__name__, "*"
    return obj.__module__, obj.__qualname__


def _members(context) -> dict[str, tuple[str, str]]:
    if context is None:
        return {}
    mod = _module(context.__module__)
    node = mod.defs[context.__qualname__]
    return {
        d.name: (context.__module__, f"{context.__qualname__}.{d.name}")
        for d in node.body
        if isinstance(d, ast.FunctionDef)
    }


class _Module:
    def __init__(self, name: str, tree: ast.Module):
        self.name = name
        self.defs: dict[str, ast.AST] = {}
        loose = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.defs[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for n in ast.walk(target):
                        if isinstance(n, ast.Name):
                            self.defs[n.id] = node
            elif not isinstance(node, ast.Import | ast.ImportFrom) and not _docstring(node):
                loose.append(node)
        self.defs["<loose>"] = ast.Module(body=loose, type_ignores=[])
        self.imports: dict[str, list[tuple[str, str]]] = {}
        package = name if _path(name).name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    bound = a.asname or a.name.split(".")[0]
                    self._bind(bound, (a.name if a.asname else a.name.split(".")[0], "*"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                for a in node.names:
                    full = f"{base}.{a.name}"
                    self._bind(a.asname or a.name, (full, "*") if _path(full) else (base, a.name))

    def _bind(self, name: str, target: tuple[str, str]) -> None:
        if target[0].split(".")[0] in PACKAGES:
            self.imports.setdefault(name, []).append(target)

    def member(self, qualname: str):
        cls, _, attr = qualname.partition(".")
        node = self.defs.get(cls)
        if not attr or not isinstance(node, ast.ClassDef):
            return None
        return next((d for d in node.body if getattr(d, "name", None) == attr), None)


def _uses(m: _Module, node: ast.AST, name: str, members: dict) -> list[tuple[str, str]]:
    """What a definition refers to: (module, name) pairs."""
    cls = name.split(".")[0] if "." in name else None
    out = []
    for n, local in _loads(node, frozenset()):
        if isinstance(n, ast.Name):
            if n.id in m.defs and n.id not in local:
                out.append((m.name, n.id))
            out += [t for t in m.imports.get(n.id, []) if t[1] != "*"]  # a module counts by the attributes used
        else:
            if n.attr in members:
                out.append(members[n.attr])
            if cls and isinstance(n.value, ast.Name) and n.value.id == "self":
                out.append((m.name, f"{cls}.{n.attr}"))
            out += _resolve_attr(m, n)
    return out


SCOPES = (
    ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
)
COMPREHENSIONS = ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp


def _loads(node: ast.AST, local: frozenset):
    """Each Name and Attribute read, with the names local where it is read (a parameter `qat` is not `qat()`).
    Annotations are skipped: they say what a thing is, not what it does."""
    if isinstance(node, SCOPES):
        local = local | _bound(node)
    if isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
        yield node, local
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _loads(child, local)


def _bound(scope: ast.AST) -> frozenset:
    """The names a function, lambda or comprehension binds itself (not in scopes nested in it)."""
    if isinstance(scope, COMPREHENSIONS):
        return frozenset(n.id for g in scope.generators for n in ast.walk(g.target) if isinstance(n, ast.Name))
    a = scope.args
    names = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if x is not None}
    declared = set()
    todo = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            names.add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
            continue
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
        elif isinstance(n, ast.Global | ast.Nonlocal):
            declared |= set(n.names)
        if not isinstance(n, SCOPES):
            todo += ast.iter_child_nodes(n)
    return frozenset(names - declared)


def _resolve_attr(m: _Module, n: ast.Attribute) -> list[tuple[str, str]]:
    """`module.attr` (through packages: `pipeline.stages.train`): the definition in that module."""
    chain = []
    while isinstance(n, ast.Attribute):
        chain.append(n.attr)
        n = n.value
    if not isinstance(n, ast.Name):
        return []
    out = []
    for mod, what in m.imports.get(n.id, []):
        if what != "*":
            continue
        for attr in reversed(chain):
            if _path(f"{mod}.{attr}"):
                mod = f"{mod}.{attr}"
                continue
            out.append((mod, attr))
            break
    return out


def _docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _path(module: str) -> Path | None:
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@cache
def _text(module: str, name: str) -> str:
    m = _module(module)
    return ast.unparse(m.defs.get(name) or m.member(name))


@cache
def _module(name: str) -> _Module | None:
    p = _path(name)
    return _Module(name, ast.parse(p.read_text())) if p else None
