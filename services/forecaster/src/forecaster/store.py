"""The database side: target history from the feature table, issued forecasts kept with their issue time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from derbus import features as fx
from derbus.storage import as_utc

if TYPE_CHECKING:
    import pandas as pd

ISSUED_TABLE = "forecasts_issued"


def issued_table(metadata: sa.MetaData) -> sa.Table:
    """Every forecast the service issued, one row per interval, keyed by its issue time."""
    return sa.Table(
        ISSUED_TABLE,
        metadata,
        sa.Column("site_id", sa.String(100), nullable=False),
        sa.Column("target", sa.String(20), nullable=False),
        sa.Column("issue_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("p10", sa.Float, nullable=False),
        sa.Column("p50", sa.Float, nullable=False),
        sa.Column("p90", sa.Float, nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("version", sa.String(20), nullable=True),
        sa.PrimaryKeyConstraint(
            "site_id", "target", "issue_time", "time", name="forecasts_issued_pkey"
        ),
    )


class ForecastStore:
    """Reads the feature table (by its documented columns) and keeps issued forecasts."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.metadata = sa.MetaData()
        self.features = fx.feature_table(self.metadata)
        self.issued = issued_table(self.metadata)

    def ensure_schema(self) -> None:
        """Create the issued-forecasts table (and an empty feature table when none exists yet)."""
        self.metadata.create_all(self.engine, checkfirst=True)

    def dispose(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()

    def sites(self) -> list[str]:
        """Sites present in the feature table."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.features.c.site_id).distinct()).scalars().all()
        return sorted(rows)

    def history(self, site_id: str, column: str, start: datetime, end: datetime) -> pd.Series:
        """A target column on the 15-minute grid [start, end) (NaN where missing)."""
        import numpy as np
        import pandas as pd

        f = self.features.c
        query = sa.select(f.time, f[column]).where(
            f.site_id == site_id, f.time >= as_utc(start), f.time < as_utc(end)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        index = fx.grid(start, end)
        if not rows:
            return pd.Series(np.nan, index=index, dtype=float)
        times = pd.DatetimeIndex([as_utc(t) for t, _ in rows]).tz_convert("UTC")
        values = pd.Series([np.nan if v is None else float(v) for _, v in rows], index=times)
        return values[~values.index.duplicated()].reindex(index)

    def bounds(self, site_id: str, column: str) -> tuple[datetime, datetime] | None:
        """First and last interval with a value of `column`."""
        f = self.features.c
        query = sa.select(sa.func.min(f.time), sa.func.max(f.time)).where(
            f.site_id == site_id, f[column].is_not(None)
        )
        with self.engine.connect() as conn:
            first, last = conn.execute(query).one()
        return None if first is None else (as_utc(first), as_utc(last))

    def save_issued(
        self,
        site_id: str,
        target: str,
        issue_time: datetime,
        frame: pd.DataFrame,
        model: str,
        version: str | None,
    ) -> int:
        """Store an issued forecast (frame indexed by interval start, columns p10/p50/p90)."""
        rows = [
            {
                "site_id": site_id,
                "target": target,
                "issue_time": as_utc(issue_time),
                "time": t.to_pydatetime(),
                "p10": float(r.p10),
                "p50": float(r.p50),
                "p90": float(r.p90),
                "model": model,
                "version": version,
            }
            for t, r in frame.iterrows()
        ]
        insert: Any = (
            postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        )
        stmt = insert(self.issued)
        stmt = stmt.on_conflict_do_update(
            index_elements=["site_id", "target", "issue_time", "time"],
            set_={k: stmt.excluded[k] for k in ("p10", "p50", "p90", "model", "version")},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)
        return len(rows)

    def issued_accuracy(
        self, site_id: str, target: str, column: str, since: datetime, *, solar: bool = False
    ) -> dict[str, float]:
        """How the forecasts issued since `since` did against the actuals known so far.

        Every issued interval with an actual counts once per forecast that covered it (issues
        every 15 min: an interval counts at up to 96 horizons). Metrics of
        `evaluation.metrics` (MAE, RMSE, nMAE, pinball, 80 % coverage; for PV, `solar`, also
        the coverage of daylight intervals) plus `forecasts`, the issues that had actuals.
        """
        import numpy as np
        import pandas as pd

        from forecaster.calibration import DAYLIGHT_ELEVATION_DEG
        from forecaster.evaluation import metrics

        i, f = self.issued.c, self.features.c
        query = (
            sa.select(i.issue_time, i.p10, i.p50, i.p90, f[column], f.solar_elevation_deg, i.time)
            .join(self.features, sa.and_(f.site_id == i.site_id, f.time == i.time))
            .where(
                i.site_id == site_id,
                i.target == target,
                i.issue_time >= as_utc(since),
                f[column].is_not(None),
            )
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(
            [r[1:6] for r in rows], columns=["p10", "p50", "p90", "actual", "elevation"]
        ).astype(float)
        daylight = frame["elevation"].to_numpy() > DAYLIGHT_ELEVATION_DEG if solar else None
        out = metrics(frame["actual"].to_numpy(), frame, daylight)
        out["forecasts"] = float(len({r[0] for r in rows}))
        if rows:
            out |= self._naive_scores(site_id, column, rows, frame, solar)
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def _naive_scores(
        self, site_id: str, column: str, rows: Sequence[Any], frame: pd.DataFrame, solar: bool
    ) -> dict[str, float]:
        """MAE of the 1-day and 7-day seasonal naive on the scored intervals, and the skill.

        The skill is against the better of the two for load, the 1-day one for PV (as in the
        backtest, `evaluation.reference_of`); rows without both naive values are left out.
        """
        import numpy as np
        import pandas as pd

        from forecaster.evaluation import reference_of

        times = pd.DatetimeIndex([as_utc(r[6]) for r in rows]).tz_convert("UTC")
        history = self.history(
            site_id,
            column,
            (times.min() - pd.Timedelta(days=7)).to_pydatetime(),
            (times.max() + fx.STEP).to_pydatetime(),
        )
        day = history.reindex(times - pd.Timedelta(days=1)).to_numpy(dtype=float)
        week = history.reindex(times - pd.Timedelta(days=7)).to_numpy(dtype=float)
        actual, p50 = frame["actual"].to_numpy(), frame["p50"].to_numpy()
        ok = np.isfinite(day) & np.isfinite(week) & np.isfinite(actual) & np.isfinite(p50)
        if not ok.any():
            return {}
        overall = {
            "seasonal_naive_day": {"mae": float(np.mean(np.abs(actual[ok] - day[ok])))},
            "seasonal_naive_week": {"mae": float(np.mean(np.abs(actual[ok] - week[ok])))},
        }
        ref = reference_of(overall, solar)
        mae = float(np.mean(np.abs(actual[ok] - p50[ok])))
        ref_mae = overall[ref]["mae"]
        return {
            "n_naive": float(ok.sum()),
            "mae_on_naive_rows": mae,
            "mae_seasonal_naive_day": overall["seasonal_naive_day"]["mae"],
            "mae_seasonal_naive_week": overall["seasonal_naive_week"]["mae"],
            "skill": 1 - mae / ref_mae if ref_mae > 0 else float("nan"),
            "reference_is_week": float(ref == "seasonal_naive_week"),
        }
