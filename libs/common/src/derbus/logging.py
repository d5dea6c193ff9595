"""Logging set-up shared by every service: one line per record, UTC timestamps."""

from __future__ import annotations

import logging
import sys
import time


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is now, not the stream it was created with.

    Logging keeps working when the stream is swapped, e.g. by a test runner's capture.
    """

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        return


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    """Configure the root logger once for a process (called from `__main__` only)."""
    handler = _CurrentStderrHandler()
    name = f"{service} " if service else ""
    handler.setFormatter(
        _UtcFormatter(
            f"%(asctime)sZ %(levelname)s {name}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
