"""lbproxy: a load-balancing reverse proxy and API gateway for private networks."""

from __future__ import annotations

from lbproxy import _build

__version__ = "0.1.0"

# Whether the hot path runs compiled by mypyc (setup.py) or as pure Python.
compiled: bool = _build.choose(__path__[0])
BUILD = "hot path compiled by mypyc" if compiled else "pure Python"
