from datetime import UTC, datetime
from pathlib import Path

import pytest

from derbus.jsonfile import read_json, write_json


def test_write_then_read_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.json"
    assert read_json(path) is None
    write_json(path, {"a": [1, 2.5, None]})
    write_json(path, {"b": "new"}, indent=None)
    assert read_json(path) == {"b": "new"}
    assert [p.name for p in path.parent.iterdir()] == ["jobs.json"]
    when = datetime(2026, 6, 1, tzinfo=UTC)
    write_json(path, {"when": when, "z": 1, "a": 2}, sort_keys=True, default=str)
    assert path.read_text().index('"a"') < path.read_text().index('"z"')
    assert read_json(path)["when"] == str(when)


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "net_balance.json"
    write_json(path, {"balance_wh": 12.5})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert read_json(path) == {"balance_wh": 12.5}
    assert [p.name for p in tmp_path.iterdir()] == ["net_balance.json"]


def test_unreadable_file_reads_as_none_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"half": ')
    assert read_json(path) is None
    assert "broken.json" in caplog.text
