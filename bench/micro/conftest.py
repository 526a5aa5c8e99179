"""Micro-benchmarks (pytest-benchmark), kept out of the main suite: ``make bench-micro`` runs
them, saves each run under bench/results/micro/ and compares it with the last one saved."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds the helpers these reuse (relay_inmemory.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
