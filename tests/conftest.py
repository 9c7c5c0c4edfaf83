"""Shared fixtures. Keep tests on the CPU, quiet and hermetic."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
