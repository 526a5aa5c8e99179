from __future__ import annotations

from lbproxy.cli import main

raise SystemExit(main())
