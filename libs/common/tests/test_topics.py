"""The topic catalogue: build, filter, parse; uniqueness; docs/topics.md is not stale."""

from pathlib import Path

import pytest

from derbus import topics
from derbus.bus import filter_matches

REPO = Path(__file__).resolve().parents[3]


def test_build_and_parse_round_trip() -> None:
    topic = topics.METER.topic("site-7", "pcc", root="x/y")
    assert topic == "x/y/site-7/telemetry/pcc/meter"
    ids = topics.METER.parse(topic, root="x/y")
    assert ids is not None
    assert (ids.site_id, ids.device_id) == ("site-7", "pcc")


def test_parse_rejects_other_topics() -> None:
    assert topics.METER.parse("x/y/site-7/telemetry/pcc/pv", root="x/y") is None
    assert topics.METER.parse("other/site-7/telemetry/pcc/meter", root="x/y") is None
    assert topics.METER.parse("x/y/site-7/telemetry/meter", root="x/y") is None


def test_filter_uses_wildcards_for_missing_ids() -> None:
    f = topics.BATTERY.filter(site_id="s1")
    assert f.endswith("/s1/telemetry/+/battery")
    assert filter_matches(f, topics.BATTERY.topic("s1", "bat-1"))
    assert not filter_matches(f, topics.BATTERY.topic("s2", "bat-1"))
    assert filter_matches(topics.BATTERY.filter(), topics.BATTERY.topic("s2", "bat-1"))


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#"])
def test_ids_that_cannot_be_levels_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="topic level"):
        topics.PV.topic(bad, "pv")


def test_spec_for_topic_finds_the_entry() -> None:
    for spec in topics.CATALOGUE:
        assert topics.spec_for_topic(spec.topic("s", "d")) is spec


def test_catalogue_entries_are_complete() -> None:
    assert len({s.key for s in topics.CATALOGUE}) == len(topics.CATALOGUE)
    for spec in topics.CATALOGUE:
        assert spec.qos in (0, 1, 2)
        assert spec.description
        if spec.category == "control" and spec.name == "set":
            assert spec.retain is False, "commands are never retained"
        if spec.category in ("forecast", "schedule", "telemetry"):
            assert spec.retain is True


def test_docs_topics_md_is_current() -> None:
    doc = REPO / "docs" / "topics.md"
    assert doc.exists(), "run `make topics`"
    assert doc.read_text() == topics.catalogue_markdown(), (
        "docs/topics.md is stale: run `make topics`"
    )


def test_no_topic_string_outside_the_catalogue() -> None:
    offenders = []
    for base in ("libs", "services"):
        for path in (REPO / base).rglob("*.py"):
            if "tests" in path.parts or path.name == "topics.py":
                continue
            if topics.DEFAULT_ROOT in path.read_text():
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
