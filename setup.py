"""The build: lbproxy's hot path compiled to C by mypyc, or left pure Python where it cannot be.

The modules named in ``COMPILED`` are the relay's hot path and what it calls per request. mypyc
compiles them from the same typed source that runs uncompiled: their classes become C structs
and their calls C calls, which takes about a third of the relay's CPU time per request (see
bench/README.md). Without a C compiler, or with ``LBPROXY_PURE=1`` in the environment, the
package builds pure Python and works the same, slower. ``lbproxy.compiled`` says which ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# lbproxy/_build.py alone: importing the package would import what is being built.
_spec = importlib.util.spec_from_file_location("_build", "lbproxy/_build.py")
assert _spec is not None and _spec.loader is not None
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)


def ext_modules() -> list[object]:
    if os.environ.get("LBPROXY_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # built without build isolation, where mypy is missing
        return []
    extensions = mypycify([f"lbproxy/{name}.py" for name in _build.COMPILED], opt_level="3")
    for extension in extensions:
        # No C compiler or no Python headers: setuptools skips the extension with a warning,
        # and lbproxy runs pure Python (lbproxy/_build.py).
        extension.optional = True
    return list(extensions)


class BuildExt(build_ext):
    """Records what it compiled (lbproxy/_build.py reads it): the digest of each source, once
    every extension is built. An optional extension that failed leaves no record, so the
    package runs pure Python rather than a mix."""

    def run(self) -> None:
        self._built: set[str] = set()
        super().run()
        if not self.extensions:
            return
        target = Path(self.get_ext_fullpath("lbproxy.relay")).parent
        manifest = target / _build.MANIFEST
        if self._built == {extension.name for extension in self.extensions}:
            manifest.write_text(json.dumps(_build.digests(Path("lbproxy")), indent=1) + "\n")
        else:
            manifest.unlink(missing_ok=True)

    def build_extension(self, ext: Any) -> None:
        super().build_extension(ext)
        self._built.add(ext.name)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt})
