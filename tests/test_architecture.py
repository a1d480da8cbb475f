"""The layering of ARCHITECTURE.md, checked from the source: imports run one way, no circle.

``letta_modifications`` (the patches) may import the domain packages; the domain packages never
import a patch module; a foundation never imports a domain package. Read with ``ast`` (imports
inside functions count too), so the check is in-process and takes well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ketta

PACKAGE = Path(ketta.__file__).resolve().parent

# Lowest first: a module may import its own package and the packages listed before it.
LAYERS: tuple[str, ...] = (
    "core",                 # foundations: settings, home, logging, console, the patch machinery
    "db",                   # the database, its engine, migrations
    "security",             # login, tokens, URL guard, redaction, keyring, tool isolation
    "llm",                  # HTTP clients to LLM endpoints, the errors a caller sees
    "usage",                # the usage ledger, prices and budgets (recorded by providers.routing)
    "providers",            # provider rules, keys, pools, health, fallback, routing, Kimi
    "api",                  # Ketta's own REST routers and middleware
    "letta_modifications",  # the declared patches: thin, calling into the packages above
    "app",                  # entry points: ketta.app, ketta.cli, ketta.startup, ketta.__main__
)
ENTRY_MODULES = {"app", "cli", "startup", "__main__"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted ``ketta.*`` module name; None for ``ketta`` itself (version constants)."""
    parts = module.split(".")
    if parts[0] != "ketta" or len(parts) == 1:
        return None
    if parts[1] in ENTRY_MODULES:
        return "app"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: a module outside the packages of ARCHITECTURE.md ({', '.join(LAYERS)})")
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``ketta...`` module ``path`` imports (``from ketta.x import y`` yields ``ketta.x.y`` when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    found.add(candidate)
    return {m for m in found if m == "ketta" or m.startswith("ketta.")}


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "versions" not in p.relative_to(PACKAGE).parts)


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Imports that run upward (a lower layer importing a higher one)."""
    found = []
    for module, targets in sorted(imports.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is None or there is None or there == here:
                continue
            if LAYERS.index(there) > LAYERS.index(here):
                found.append(f"{module} imports {target} ({here} may not import {there})")
    return found


def package_cycles(imports: dict[str, set[str]]) -> list[str]:
    """Circles between sub-packages (``ketta.providers`` -> ``ketta.llm`` -> ``ketta.providers``)."""
    edges: dict[str, set[str]] = {}
    for module, targets in imports.items():
        src = layer_of(module)
        for target in targets:
            dst = layer_of(target)
            if src and dst and src != dst:
                edges.setdefault(src, set()).add(dst)
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sources()}


def test_imports_run_one_way(imports: dict[str, set[str]]) -> None:
    """Patches -> domain -> foundations: no domain module imports a patch module, no foundation a domain one."""
    assert violations(imports) == []


def test_no_circle_between_packages(imports: dict[str, set[str]]) -> None:
    assert package_cycles(imports) == []


def test_no_flat_modules_beside_the_packages() -> None:
    """New code goes into a package by concern; only the entry points stay at the top of ``ketta/``."""
    flat = {p.stem for p in PACKAGE.glob("*.py")} - ENTRY_MODULES - {"__init__"}
    assert flat == set()


def test_the_check_catches_an_upward_import() -> None:
    """A domain module importing a patch module, or a foundation importing a domain one, is reported."""
    made_up = {
        "ketta.providers.keys": {"ketta.letta_modifications.services.provider_manager"},
        "ketta.core.settings": {"ketta.providers.rules"},
        "ketta.letta_modifications.server.server": {"ketta.providers.store"},
    }
    assert violations(made_up) == [
        "ketta.core.settings imports ketta.providers.rules (core may not import providers)",
        "ketta.providers.keys imports ketta.letta_modifications.services.provider_manager (providers may not import letta_modifications)",
    ]
    assert package_cycles({"ketta.llm.http": {"ketta.providers.keys"}, "ketta.providers.keys": {"ketta.llm.http"}}) == [
        "llm -> providers -> llm"
    ]


def referenced_names(path: Path) -> set[str]:
    """Names a module uses (loaded names, attributes, ``module:name`` strings), imports and definitions aside."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            found.add(node.value.rpartition(":")[2].split(".")[0])
    return found


def uninstalled_hooks(hooks: list, used: set[str]) -> list[str]:
    """Declared hooks whose installer no module of Ketta uses (the registry would list a change that is not made)."""
    return [f"{hook.name} ({hook.installed_by})" for hook in hooks
            if hook.installed_by.partition(":")[2].split(".")[0] not in used]


def test_every_declared_hook_is_installed_somewhere() -> None:
    """Hooks are installed by ``app.py`` or by the patch owning the object they wrap, not by the
    registry (ARCHITECTURE.md says why); so each declared installer must be used by some module
    other than ``hooks.py``, or the map lists a change Ketta no longer makes."""
    from ketta.letta_modifications.hooks import HOOKS

    used: set[str] = set()
    for path in sources():
        if path.name != "hooks.py" or path.parent.name != "letta_modifications":
            used |= referenced_names(path)
    assert uninstalled_hooks(HOOKS, used) == []
    # and the check reports a declared installer nobody calls
    from ketta.core.patching import Hook

    ghost = Hook(name="env GHOST", kind="environment", installed_by="ketta.core.home:never_called_anywhere", setting="", why="-")
    assert uninstalled_hooks([ghost], used) == ["env GHOST (ketta.core.home:never_called_anywhere)"]
