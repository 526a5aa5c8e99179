"""Which modules the build compiles with mypyc (setup.py), and which of them this process runs.

Compiled modules sit beside their sources (``relay.py`` and ``relay.cpython-311-*.so``), and
Python's import prefers the extension. A compiled module older than its source (edited since the
build) would run the old code silently, so the package runs pure Python instead, all of it, and
warns: compiled and uncompiled modules of the hot path must not mix (they share native classes).
``LBPROXY_PURE=1`` runs pure Python on purpose (the reference the tests compare against).
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib import machinery
from pathlib import Path

# The relay's hot path and what it calls per request; nothing here may be monkeypatched.
COMPILED = (
    "acl",
    "authz",
    "balancer",
    "chunked",
    "deadline",
    "failover",
    "framing",
    "h11engine",
    "health",
    "http",
    "metrics",
    "pool",
    "recording",
    "relay",
    "responses",
    "retry",
    "router",
    "routes",
    "strict",
    "tries",
    "upstream",
)


def _extension(directory: Path, name: str) -> Path | None:
    for suffix in machinery.EXTENSION_SUFFIXES:
        path = directory / (name + suffix)
        if path.exists():
            return path
    return None


def choose(package_dir: str) -> bool:
    """Whether the package runs compiled; when it must not, make its imports skip extensions."""
    directory = Path(package_dir)
    extensions = [_extension(directory, name) for name in COMPILED]
    built = [path for path in extensions if path is not None]
    reason = None
    if os.environ.get("LBPROXY_PURE"):
        reason = ""  # asked for: no warning
    elif not built:
        return False
    elif len(built) < len(COMPILED):
        reason = "some compiled modules are missing"
    else:
        oldest = min(path.stat().st_mtime for path in built)
        newer = [n for n in COMPILED if (directory / f"{n}.py").stat().st_mtime > oldest]
        if newer:
            reason = f"{', '.join(f'{n}.py' for n in newer)} changed since the build"
    if reason is None:
        return True
    if reason:
        warnings.warn(
            f"lbproxy runs pure Python: {reason}; rebuild with `make build` (or "
            "`pip install -e .`), or set LBPROXY_PURE=1",
            RuntimeWarning,
            stacklevel=3,
        )
    # Submodules are found through this finder: sources and bytecode, no extensions.
    sys.path_importer_cache[package_dir] = machinery.FileFinder(
        package_dir,
        (machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )
    return False


if __name__ == "__main__":  # the Makefile's list of what a rebuild depends on
    print(" ".join(f"lbproxy/{name}.py" for name in COMPILED))
