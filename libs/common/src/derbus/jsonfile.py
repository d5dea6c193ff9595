"""JSON state files: written atomically (a reader or a crash never sees half a file), read leniently."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(
    path: Path,
    data: Any,
    *,
    indent: int | None = 1,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write `data` as JSON to `path` atomically, creating its folder.

    The text goes to a temporary file beside `path`, is flushed to disk and then renamed over
    `path`, so `path` holds either the old or the new content, whole.

    Args:
        path: the file.
        data: anything `json.dumps` takes.
        indent: as in `json.dumps`.
        sort_keys: as in `json.dumps`.
        default: as in `json.dumps` (e.g. `str` for datetimes).

    Raises:
        TypeError: when `data` is not JSON-serialisable (nothing is written).
        OSError: when the folder or file cannot be written.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON content of `path`; None when it does not exist or cannot be read (logged)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable state file %s: %s", path, err)
        return None
