"""Imports run one way (STYLE.md): the pure modules import no asyncio, socket, parser or
prometheus code, and only other pure modules of ours; ``config`` and ``errors`` import nothing
of ours. Read from the source, so a wrong-way import fails here before it is ever run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "lbproxy"
PURE = {
    "acl",
    "authz",
    "balancer",
    "chunked",
    "config",
    "configaccess",
    "configcheck",
    "configlb",
    "configload",
    "configreader",
    "errors",
    "health",
    "hosts",
    "retry",
    "router",
    "signing",
    "strict",
    "throttle",
}
FOUNDATIONS = {"config", "errors"}
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "uvloop", "httptools", "h11"}
IO_MODULES |= {"prometheus_client"}


def imports_of(module: str) -> set[str]:
    """Top-level names this module imports: ``lbproxy.x`` as ``lbproxy.x``, others as their
    first component."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "lbproxy":
                names.update(f"lbproxy.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {n if n.startswith("lbproxy.") else n.split(".")[0] for n in names}


def test_every_pure_module_exists() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} >= PURE


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io(module: str) -> None:
    assert imports_of(module) & IO_MODULES == set()


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_only_pure_modules(module: str) -> None:
    ours = {
        name.removeprefix("lbproxy.") for name in imports_of(module) if name.startswith("lbproxy.")
    }
    assert ours <= PURE, f"{module} imports {sorted(ours - PURE)}"


@pytest.mark.parametrize("module", sorted(FOUNDATIONS))
def test_foundations_import_nothing_of_ours(module: str) -> None:
    assert not any(name.startswith("lbproxy") for name in imports_of(module))


def test_the_walk_sees_imports() -> None:
    # Guards the test itself: a walk that found nothing would pass everything above.
    assert "lbproxy.hosts" in imports_of("balancer")
    assert "asyncio" in imports_of("relay")
