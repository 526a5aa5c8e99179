"""Which modules the build compiles with mypyc (setup.py), and which of them this process runs.

Compiled modules sit beside their sources (``relay.py`` and ``relay.cpython-311-*.so``), and
Python's import prefers the extension. The build records the SHA-256 of each source it compiled
in ``_compiled.json``. A source that differs (edited since the build) would run its old code
silently, so the package runs pure Python instead, all of it, and warns: compiled and
uncompiled modules of the hot path must not mix (they share native classes). Digests, not
modification times: a rebuild copies extensions that did not change with their old times.
``LBPROXY_PURE=1`` runs pure Python on purpose (the reference the tests compare against).
"""

from __future__ import annotations

import hashlib
import json
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


MANIFEST = "_compiled.json"


def digests(directory: Path) -> dict[str, str]:
    """The SHA-256 of each compiled module's source in ``directory``."""
    return {
        name: hashlib.sha256((directory / f"{name}.py").read_bytes()).hexdigest()
        for name in COMPILED
    }


def _changed(directory: Path) -> list[str]:
    """The sources that differ from what the build compiled (all of them without a record)."""
    try:
        built = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return list(COMPILED)
    return [name for name, digest in digests(directory).items() if built.get(name) != digest]


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
    elif changed := _changed(directory):
        reason = f"{', '.join(f'{name}.py' for name in changed)} changed since the build"
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
