"""Shared test configuration."""

from __future__ import annotations

import sys
from pathlib import Path

# the conformance suites live beside the tests and are imported by several modules
sys.path.insert(0, str(Path(__file__).parent))
