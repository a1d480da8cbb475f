"""The patches and their upstream fingerprints read from source text, without importing Letta.

``import letta`` takes seconds (its package imports most of the server), and the patch modules
import Letta to define their replacements. ``ketta patches`` only needs each declaration's
strings and the source of each upstream target, so this module reads both with ``ast``: the
``Patch(...)`` calls in the patch modules' ``PATCHES`` lists (strings, names of module
constants, f-strings of them), and the target's definition in the installed file, found
through ``importlib.util.find_spec`` of the top-level package (which imports nothing).

The text fingerprint is the one :func:`ketta.core.patching.source_fingerprint` computes from the
live object (the same lines, dedented). Whatever this cannot read statically (a target that
is not a plain definition, a declaration that is not literal) is reported as ``None``; the
caller then falls back to importing, so the answer is never guessed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import textwrap
from dataclasses import dataclass
from pathlib import Path

DECLARED_FIELDS = ("target", "fingerprint", "setting", "why", "mode", "kind", "upstream", "requires")
LOCALS = ".<locals>."


@dataclass(frozen=True)
class Declared:
    """A patch as declared, without its replacement."""

    target: str
    fingerprint: str
    setting: str
    why: str
    mode: str = "replace"
    kind: str = "feature"
    upstream: str = ""
    requires: str = ""


class NotStatic(LookupError):
    """Source that needs importing to be understood."""


def module_file(module: str) -> Path:
    """The installed source file of ``module``, found without importing any package."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise NotStatic(f"{top} is not installed")
    if not rest:
        if spec.origin is None or not spec.origin.endswith(".py"):
            raise NotStatic(module)
        return Path(spec.origin)
    if not spec.submodule_search_locations:
        raise NotStatic(module)
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):  # a package wins over a module file
        if candidate.is_file():
            return candidate
    raise NotStatic(f"no source for {module}")


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> tuple[ast.Module, list[str]]:
    text = path.read_text()
    return ast.parse(text), text.splitlines(keepends=True)


def _constant(node: ast.AST, names: "dict[str, str] | _Constants") -> str:
    """A string from a literal, a module constant, an f-string or '+' of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(_constant(v.value if isinstance(v, ast.FormattedValue) else v, names) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant(node.left, names) + _constant(node.right, names)
    raise NotStatic(ast.dump(node)[:80])


class _Constants:
    """A module's top-level string constants; names it imports are looked up when used."""

    def __init__(self, module: str, depth: int = 0):
        if depth > 5:
            raise NotStatic(f"{module}: constant imported through too many modules")
        tree, _ = _parse(module_file(module))
        self.values: dict[str, str] = {}
        self.imports: dict[str, tuple[str, str]] = {}
        self.depth = depth
        for statement in tree.body:
            if isinstance(statement, ast.ImportFrom) and statement.module != "__future__":
                for alias in statement.names:
                    self.imports[alias.asname or alias.name] = (_import_source(module, statement), alias.name)
            elif isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
                try:
                    self.values[statement.targets[0].id] = _constant(statement.value, self)
                except NotStatic:
                    pass

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self.imports

    def __getitem__(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        if name not in self.imports:
            raise NotStatic(f"{name} is not a string constant")
        source, original = self.imports[name]
        return _Constants(source, self.depth + 1)[original]


def declared_patches(module: str) -> list[Declared]:
    """The ``Patch(...)`` declarations of a patch module's ``PATCHES`` list, in order."""
    tree, _ = _parse(module_file(module))
    names = _Constants(module)
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name) \
                and statement.targets[0].id == "PATCHES":
            if not isinstance(statement.value, ast.List):
                raise NotStatic(f"{module}.PATCHES")
            return [_declared(call, names) for call in statement.value.elts]
    raise NotStatic(f"{module} has no PATCHES list")


def _declared(call: ast.expr, names: "_Constants") -> Declared:
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Patch" and not call.args):
        raise NotStatic("not a Patch(...) call with keywords")
    values = {kw.arg: _constant(kw.value, names) for kw in call.keywords if kw.arg in DECLARED_FIELDS}
    return Declared(**values)


def _definitions(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a module or class body binds, to the statement that binds them (last one wins)."""
    found: dict[str, ast.stmt] = {}
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[statement.name] = statement
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = statement
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            found[statement.target.id] = statement
        elif isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                found[alias.asname or alias.name] = statement
    return found


def _import_source(module: str, statement: ast.ImportFrom) -> str:
    if not statement.level:
        return statement.module or ""
    package = module.split(".")
    if not module_file(module).name == "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (statement.level - 1)]
    return ".".join(package + ([statement.module] if statement.module else []))


def _resolve(module: str, path: list[str]) -> tuple[ast.stmt | None, list[str], str]:
    """(definition node, the file's lines, its module) of ``module:path``; node None = the module."""
    tree, lines = _parse(module_file(module))
    node: ast.stmt | None = None
    body = tree.body
    for depth, name in enumerate(path):
        found = _definitions(body).get(name)
        if found is None:
            raise NotStatic(f"{module}:{'.'.join(path[: depth + 1])} not found")
        if isinstance(found, ast.ImportFrom):
            if depth:
                raise NotStatic("import inside a class")
            original = next(a.name for a in found.names if (a.asname or a.name) == name)
            return _resolve(_import_source(module, found), [original, *path[1:]])
        if isinstance(found, ast.Assign) and depth == 0:
            # ``name = instance.method`` with ``instance = Class()`` (e.g. nltk.download)
            value = found.value
            if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
                holder = _definitions(body).get(value.value.id)
                if isinstance(holder, ast.Assign) and isinstance(holder.value, ast.Call) and isinstance(holder.value.func, ast.Name):
                    return _resolve(module, [holder.value.func.id, value.attr, *path[1:]])
            raise NotStatic(f"{module}:{name} is computed")
        node = found
        if depth < len(path) - 1:
            if not isinstance(found, ast.ClassDef):
                raise NotStatic(f"{module}:{name} is not a class")
            body = found.body
    return node, lines, module


def _node_text(node: ast.stmt | None, lines: list[str]) -> str:
    if node is None:
        return "".join(lines)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        raise NotStatic("not a definition")
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = node.end_lineno or node.lineno
    # Like inspect's BlockFinder: comments after the last statement, indented at least as much as
    # the body, belong to the block (up to the next line of code).
    body_column = node.body[0].col_offset
    for number in range(end, len(lines)):
        stripped = lines[number].strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if len(lines[number]) - len(lines[number].lstrip()) >= body_column:
            end = number + 1
    return textwrap.dedent("".join(lines[start - 1 : end]))


def fingerprint(declared: Declared) -> str:
    """The fingerprint of the installed upstream source of a target (owner for add/enum_member)."""
    module, attrs = declared.target.split(":", 1)
    if declared.mode == "exception_handler":
        factory, handler = attrs.split(LOCALS, 1)
        node, lines, _ = _resolve(module, factory.split("."))
        if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == handler for n in ast.walk(node)):
            raise NotStatic(f"{declared.target}: {factory} no longer defines {handler}")
        return hashlib.sha256(_node_text(node, lines).encode()).hexdigest()[:16]
    path = attrs.split(".")
    if declared.mode in ("add", "enum_member"):
        path = path[:-1]
    node, lines, _ = _resolve(module, path)
    return hashlib.sha256(_node_text(node, lines).encode()).hexdigest()[:16]


def defined_upstream(declared: Declared) -> bool:
    """Whether the owner of an add/enum_member target already defines the attribute."""
    module, attrs = declared.target.split(":", 1)
    *owner, name = attrs.split(".")
    node, _, resolved_module = _resolve(module, owner)
    if node is None:
        tree, _ = _parse(module_file(resolved_module))
        return name in _definitions(tree.body)
    if not isinstance(node, ast.ClassDef):
        raise NotStatic("owner is not a class")
    return name in _definitions(node.body)


def drift(declared: Declared) -> str | None:
    """None if the installed upstream matches, else what changed; NotStatic if it cannot tell."""
    from ketta.core.patching import requirement_problem

    problem = requirement_problem(declared.requires)
    if problem:
        return problem
    found = fingerprint(declared)
    if found != declared.fingerprint:
        raise NotStatic(f"fingerprint {found} differs: confirm by importing")
    if declared.mode in ("add", "enum_member") and defined_upstream(declared):
        raise NotStatic("attribute may exist upstream: confirm by importing")
    return None
