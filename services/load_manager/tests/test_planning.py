from datetime import UTC, datetime

from derbus.messages import TimeSeries
from derbus.tariff import Tariff
from derbus.testing import time_series
from load_manager.jobs import JobBook
from load_manager.planning import build_problem
from load_manager.settings import HouseConfig

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def forecast(quantity: str, values: list[float], **quantiles: list[float]) -> TimeSeries:
    return time_series(values, T0, source="t", quantity=quantity, quantiles=quantiles)


def test_problem_plans_on_the_configured_quantiles_mean_per_step() -> None:
    forecasts = {
        ("h1", "load"): forecast("load_p_kw", [1.0, 2.0, 1.0, 2.0], p90=[3.0, 4.0, 3.0, 4.0]),
        ("h1", "pv"): forecast("pv_generation_kw", [4.0, 4.0, 2.0, 2.0], p10=[1.0, 2.0, 0.0, 0.0]),
    }

    def problem(load_q: str | None, pv_q: str | None) -> tuple[tuple[float, ...], ...]:
        p = build_problem(
            now=T0,
            step_s=1800,
            n_steps=3,
            houses=[HouseConfig(house_id="h1")],
            book=JobBook({}),
            forecasts=forecasts,
            tariff=Tariff(),
            shared_pv=True,
            neighbourhood_limit_kw=None,
            cost_weight=1.0,
            peak_weight_per_kw=0.0,
            load_quantile=load_q,
            pv_quantile=pv_q,
        )
        return p.houses[0].base_kw, p.houses[0].pv_kw

    assert problem(None, None) == ((1.5, 1.5, 0.0), (4.0, 2.0, 0.0))
    assert problem("p90", "p10") == ((3.5, 3.5, 0.0), (1.5, 0.0, 0.0))
    assert problem("p50", "p50") == problem(None, None), "absent quantile: the values"
