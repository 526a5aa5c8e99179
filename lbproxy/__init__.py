"""lbproxy: a load-balancing reverse proxy and API gateway for private networks."""

from __future__ import annotations

__version__ = "0.1.0"
