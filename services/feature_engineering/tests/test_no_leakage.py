"""No leakage: every feature at issue time T is unchanged whatever happens to the data after T."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from feature_engineering.pipeline import PassWindow, compute_batch
from feature_engineering.synthetic import samples_frame, synthetic_frame

START = datetime(2026, 3, 2, tzinfo=UTC)

ISSUE = START + timedelta(days=17, hours=13, minutes=15)  # a weekday afternoon, PV producing
WINDOW = PassWindow(ISSUE - timedelta(days=2), START + timedelta(days=21))
OPTIONS = {"max_fill_steps": 4, "short_window_steps": 16, "long_window_steps": 2 * 96}


def features(samples: pd.DataFrame, site: fx.SiteContext) -> pd.DataFrame:
    return compute_batch(samples, WINDOW, START, site, **OPTIONS)


def perturbed_after(samples: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Values at or after `cutoff` scrambled, and a chunk of them deleted."""
    rng = np.random.default_rng(3)
    out = samples.copy()
    late = out["time"] >= cutoff
    out.loc[late, "value"] = out.loc[late, "value"] * rng.uniform(0.1, 5.0, late.sum()) + 3.0
    gone = late & (out["time"] < cutoff + pd.Timedelta(hours=5))
    return out[~gone]


@pytest.fixture(scope="module")
def samples(site: fx.SiteContext) -> pd.DataFrame:
    """21 days of 5-minute readings (finer than the grid) with a 2-hour outage a day before."""
    frame = synthetic_frame(START, 21, site, step_s=300, seed=7)
    outage = pd.Timestamp(ISSUE) - pd.Timedelta(days=1)
    frame = frame[(frame.index < outage) | (frame.index >= outage + pd.Timedelta(hours=2))]
    return samples_frame(frame)


@pytest.fixture(scope="module")
def pair(samples: pd.DataFrame, site: fx.SiteContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = features(samples, site)
    after = features(perturbed_after(samples, pd.Timestamp(ISSUE)), site)
    return base, after


def known_at(column: fx.FeatureColumn) -> pd.Timestamp:
    """The last row whose value of `column` must be known at the issue time."""
    issue = pd.Timestamp(ISSUE)
    # an observed value describes its own interval and is known when the interval ends
    return issue - fx.STEP if column.availability == "observed" else issue


@pytest.mark.parametrize("column", fx.FEATURE_COLUMNS, ids=lambda c: c.name)
def test_feature_is_known_at_issue_time(
    column: fx.FeatureColumn, pair: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    base, after = pair
    rows = base.index <= known_at(column)
    pd.testing.assert_series_equal(
        base.loc[rows, column.name], after.loc[rows, column.name], check_exact=True
    )
    assert base.loc[rows, column.name].notna().any(), f"{column.name} is never computed"


def test_the_check_can_fail_data_before_the_issue_time_does_change_features(
    samples: pd.DataFrame, site: fx.SiteContext, pair: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    changed = features(perturbed_after(samples, pd.Timestamp(ISSUE) - fx.STEP), site)
    base, _ = pair
    issue = pd.Timestamp(ISSUE)
    for name in ("load_kw_lag_1", "pv_kw_mean_short", "pcc_kw_std_short", "temp_c_lag_1"):
        assert base.loc[issue, name] != changed.loc[issue, name], name


def test_observed_values_do_change_after_their_interval(
    pair: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    base, after = pair
    issue = pd.Timestamp(ISSUE)
    assert not np.isclose(
        base.loc[issue + fx.STEP * 24, "load_kw"], after.loc[issue + fx.STEP * 24, "load_kw"]
    )
    assert (
        pd.isna(after.loc[issue, "load_kw"])
        or after.loc[issue, "load_kw"] != base.loc[issue, "load_kw"]
    )


def test_the_outage_is_filled_then_left_missing(pair: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, _ = pair
    outage = pd.Timestamp(ISSUE) - pd.Timedelta(days=1)
    rows = base.loc[outage : outage + pd.Timedelta(minutes=105)]
    assert rows["load_kw_filled"].tolist() == [True] * 4 + [False] * 4
    assert rows["load_kw"].iloc[4:].isna().all()
    assert rows["load_kw"].iloc[:4].notna().all()
