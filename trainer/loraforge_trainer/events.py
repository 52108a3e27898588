"""Machine-readable progress: one JSON object per line on stdout, flushed at once.

Everything meant for humans goes to stderr (``log``), so stdout stays parseable.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity; a non-finite float becomes null rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def emit(event: str, **fields: Any) -> None:
    """Write one event line (``{"event": event, **fields}``) to stdout and flush it."""
    obj = {"event": event, **fields}
    # sys.stdout looked up at call time, so tests can capture it with redirect_stdout.
    sys.stdout.write(json.dumps(_clean(obj), allow_nan=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def stage(name: str) -> None:
    emit("stage", stage=name)
    log(f"stage: {name}")


def log(message: str) -> None:
    """A human log line, on stderr only."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
