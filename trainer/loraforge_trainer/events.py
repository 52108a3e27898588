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


class TolerantStream:
    """A text stream that survives its reader going away.

    The trainer's stderr is a pipe to the worker's parent; if that process dies (a service killed
    with SIGKILL), every write raises ``BrokenPipeError``. A log line must never stop training or
    the checkpoint a stop request asks for, so after the first failed write this stream drops
    what it is given.
    """

    def __init__(self, stream):
        self._stream = stream
        self._broken = False

    def write(self, text):
        if not self._broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._broken = True
        return len(text)

    def flush(self):
        if not self._broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._broken = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def protect_stderr() -> None:
    """Replaces ``sys.stderr`` with a :class:`TolerantStream` (before libraries bind to it)."""
    if not isinstance(sys.stderr, TolerantStream):
        sys.stderr = TolerantStream(sys.stderr)
