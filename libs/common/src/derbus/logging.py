"""Logging set-up shared by every service: one line per record, UTC timestamps."""

from __future__ import annotations

import logging
import sys
import time


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    """Configure the root logger once for a process (called from `__main__` only)."""
    handler = logging.StreamHandler(sys.stderr)
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
