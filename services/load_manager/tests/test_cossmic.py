"""Import of CoSSMic-style files: the shipped examples, and malformed files naming the line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from derbus.errors import ConfigError
from load_manager.cossmic import load_jobs, load_neighbourhood, load_profile
from load_manager.profiles import profile_from_cumulative, resample_profile

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_example_neighbourhood() -> None:
    hood = load_neighbourhood(EXAMPLES / "neighbourhood.xml")
    assert hood.neighbourhood_id == "demo-street"
    assert hood.limit_kw == 30
    assert [h.house_id for h in hood.houses] == ["house-1", "house-2", "house-3"]
    assert hood.houses[2].connection_limit_kw == 5.75
    assert hood.houses[1].devices == {"ev": "ev", "dishwasher": "dishwasher"}


def test_example_jobs_csv_and_xml() -> None:
    hood = load_neighbourhood(EXAMPLES / "neighbourhood.xml")
    jobs = load_jobs(EXAMPLES / "jobs.csv", step_s=900, neighbourhood=hood)
    assert [j.job_id for j in jobs] == ["h1-wm-1", "h1-dw-1", "h2-ev-1", "h2-dw-1", "h3-wm-1"]
    wm = jobs[0]
    assert wm.earliest_start == datetime(2026, 6, 1, 6, tzinfo=UTC)
    assert wm.energy_kwh == pytest.approx(0.8)  # the profile's last cumulative value
    assert len(wm.profile_kw) == 6  # 5400 s in 900 s steps
    assert jobs[3].earliest_start == datetime(2026, 6, 1, 8, tzinfo=UTC), "Unix seconds"
    assert jobs[4].earliest_start == datetime(2026, 6, 1, 7, tzinfo=UTC), "+02:00 offset"
    xml_jobs = load_jobs(EXAMPLES / "jobs.xml", step_s=900, neighbourhood=hood)
    assert [j.house_id for j in xml_jobs] == ["house-1", "house-3"]


def test_cumulative_profile_to_power() -> None:
    # 0 -> 250 Wh in 15 min (1 kW), flat 15 min, +500 Wh in the next 15 min (2 kW)
    assert profile_from_cumulative([(0, 0), (900, 250), (1800, 250), (2700, 750)], 900) == [
        pytest.approx(1.0),
        pytest.approx(0.0),
        pytest.approx(2.0),
    ]
    assert resample_profile([1.0, 3.0], 900, 1800) == [pytest.approx(2.0)]
    assert resample_profile([2.0], 1800, 900) == [pytest.approx(2.0), pytest.approx(2.0)]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


GOOD_PROFILE = "time_s,cumulative_wh\n0,0\n900,100\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "hood.xml",
            "<neighbourhood>\n<house id='a'>\n</neighbourhood>\n",
            r"hood.xml:3: malformed XML",
        ),
        (
            "hood.xml",
            "<neighbourhood>\n  <house>\n  </house>\n</neighbourhood>\n",
            r"hood.xml:2: <house> lacks the attribute 'id'",
        ),
        (
            "hood.xml",
            "<neighbourhood>\n<house id='a'/>\n<house id='a'/>\n</neighbourhood>",
            r"hood.xml:3: duplicate house id 'a'",
        ),
        (
            "hood.xml",
            "<neighbourhood>\n<house id='a' connection_limit_kw='lots'/>\n</neighbourhood>",
            r"hood.xml:2: connection_limit_kw='lots' is not a number",
        ),
        (
            "hood.xml",
            "<neighbourhood>\n<house id='a'>\n<device id='x'/>\n</house>\n</neighbourhood>",
            r"hood.xml:3: <device> lacks the attribute 'type'",
        ),
        ("hood.xml", "<houses/>", r"hood.xml:1: root element must be <neighbourhood>"),
    ],
)
def test_malformed_neighbourhood_names_the_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_neighbourhood(write(tmp_path, name, text))


HEADER = "house,device,job_id,est,lst,profile\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("house,device,id\n", r"jobs.csv:1: header must be"),
        (
            HEADER + "h,d,j1,2026-06-01T06:00:00Z,2026-06-01T08:00:00Z,p.csv\nh,d,j2,xx,yy,p.csv\n",
            r"jobs.csv:3: Invalid isoformat string: 'xx'",
        ),
        (
            HEADER + "h,d,j1,2026-06-01T06:00:00,2026-06-01T08:00:00Z,p.csv\n",
            r"jobs.csv:2: time '2026-06-01T06:00:00' has no zone",
        ),
        (
            HEADER + "h,d,j1,2026-06-01T06:00:00Z,2026-06-01T08:00:00Z\n",
            r"jobs.csv:2: expected 6 columns, got 5",
        ),
        (
            HEADER + "h,d,j1,2026-06-01T08:00:00Z,2026-06-01T06:00:00Z,p.csv\n",
            r"jobs.csv:2: .*latest_start is before earliest_start",
        ),
        (
            HEADER + "h,d,j1,1780300800,1780300900,p.csv\n\nh,d,j1,1780300800,1780300900,p.csv\n",
            r"jobs.csv:4: duplicate job_id 'j1'",
        ),
        (HEADER + "h,d,j1,1780300800,1780300900,missing.csv\n", r"missing.csv: cannot read"),
        (HEADER + "h,,j1,1780300800,1780300900,p.csv\n", r"jobs.csv:2: empty device"),
    ],
)
def test_malformed_jobs_csv_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "p.csv", GOOD_PROFILE)
    with pytest.raises(ConfigError, match=message):
        load_jobs(write(tmp_path, "jobs.csv", text))


def test_malformed_jobs_xml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "p.csv", GOOD_PROFILE)
    text = "<jobs>\n<job id='a' house='h' device='d' est='1780300800' lst='1780300900'/>\n</jobs>"
    with pytest.raises(ConfigError, match=r"jobs.xml:2: <job> lacks the attribute 'profile'"):
        load_jobs(write(tmp_path, "jobs.xml", text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,wh\n0,0\n", r"p.csv:1: header must be 'time_s,cumulative_wh'"),
        ("time_s,cumulative_wh\n0,0\n900,100\n800,200\n", r"p.csv:4: time_s 800 does not increase"),
        ("time_s,cumulative_wh\n0,0\n900,100\n1800,50\n", r"p.csv:4: cumulative_wh 50 decreases"),
        ("time_s,cumulative_wh\n0,0\n900,abc\n", r"p.csv:3: not a number"),
        ("time_s,cumulative_wh\n0,0\n", r"needs at least two points"),
    ],
)
def test_malformed_profile_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profile(write(tmp_path, "p.csv", text), 900)


def test_jobs_must_fit_the_neighbourhood(tmp_path: Path) -> None:
    hood = load_neighbourhood(EXAMPLES / "neighbourhood.xml")
    write(tmp_path, "p.csv", GOOD_PROFILE)
    text = HEADER + "house-1,ev,j1,1780300800,1780300900,p.csv\n"
    with pytest.raises(ConfigError, match=r"jobs.csv:2: house 'house-1' has no device 'ev'"):
        load_jobs(write(tmp_path, "jobs.csv", text), neighbourhood=hood)
    text = HEADER + "house-9,ev,j1,1780300800,1780300900,p.csv\n"
    with pytest.raises(ConfigError, match=r"jobs.csv:2: house 'house-9' is not in"):
        load_jobs(write(tmp_path, "jobs.csv", text), neighbourhood=hood)
