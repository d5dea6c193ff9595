"""Write the Grafana dashboards (deploy/grafana/dashboards/*.json) with Grafana's typed builders.

Panels, variables and dashboards are built with `grafana-foundation-sdk` (PyPI): the JSON comes
from its models, so a field the schema does not know cannot be written. Flux queries travel as
the SDK's untyped data query (it has no InfluxDB query type).

Run `.venv/bin/python deploy/grafana/build_dashboards.py` after changing a panel. Every query
reads measurements and fields of `derbus.storage.influx_schema()` (tests/test_deploy_grafana.py
checks it); KPI fields are chosen by the controllers, so they are selected by regular expression
(the names are listed in docs/deploy.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

DATASOURCE = dash.DataSourceRef(type_val="influxdb", uid="derbus-influxdb")
OUT = Path(__file__).resolve().parent / "dashboards"

SITE_FILTER = 'r.site_id == "${site}"'


# --- Flux building blocks -------------------------------------------------------------------------


def base(
    measurement: str, where: str = "", fields: tuple[str, ...] = (), field_re: str = ""
) -> str:
    """`from |> range |> filter` for one measurement, optional extra condition and fields."""
    cond = f'r._measurement == "{measurement}"'
    if where:
        cond += f" and {where}"
    lines = [
        "from(bucket: v.defaultBucket)",
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f"  |> filter(fn: (r) => {cond})",
    ]
    if fields:
        lines.append(
            "  |> filter(fn: (r) => " + " or ".join(f'r._field == "{f}"' for f in fields) + ")"
        )
    if field_re:
        lines.append(f"  |> filter(fn: (r) => r._field =~ /{field_re}/)")
    return "\n".join(lines)


def mean_window(every: str = "v.windowPeriod", fn: str = "mean") -> str:
    return f"  |> aggregateWindow(every: {every}, fn: {fn}, createEmpty: false)"


def named(name: str) -> str:
    """Name a single series (drop the tags so Grafana shows exactly `name`)."""
    return (
        '  |> keep(columns: ["_time", "_value"])\n'
        f'  |> set(key: "_field", value: "{name}")\n'
        f'  |> yield(name: "{name}")'
    )


def by_field() -> str:
    """Series named by their field only."""
    return '  |> keep(columns: ["_time", "_value", "_field"])'


def mean_named(query: str, name: str) -> str:
    """`query` as one series of window means, shown as exactly `name`."""
    return query + "\n" + mean_window() + "\n" + named(name)


def last_by_field(query: str) -> str:
    """`query` thinned to the last value per window, its series named by their field only."""
    return query + "\n" + mean_window(fn="last") + "\n" + by_field()


def constant_line(name: str, variable: str, measurement: str, where: str, field: str) -> str:
    """A horizontal line at a dashboard variable's value, on the timestamps of a real series."""
    return (
        base(measurement, where, (field,))
        + "\n"
        + mean_window()
        + f'\n  |> map(fn: (r) => ({{r with _value: float(v: "${{{variable}}}")}}))\n'
        + named(name)
    )


# --- panels (Grafana's typed builders: grafana-foundation-sdk) -----------------------------------


class FluxQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """An InfluxDB Flux query. The SDK has no InfluxDB query type, so it travels as the SDK's
    untyped query (the data source, a refId and the Flux text)."""

    def __init__(self, query: str, ref: str) -> None:
        self._query = cogruntime.UnknownDataquery(
            {"datasource": DATASOURCE.to_json(), "refId": ref, "query": query}
        )

    def build(self) -> cogvariants.Dataquery:
        return self._query


PANELS: dict[str, Callable[[], Any]] = {
    "timeseries": timeseries.Panel,
    "stat": stat.Panel,
    "state-timeline": statetimeline.Panel,
    "table": table.Panel,
    "bargauge": bargauge.Panel,
}

Override = tuple[str, list[dash.DynamicConfigValue]]


class Layout:
    """Places panels left to right on a 24-column grid."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dash.GridPos:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = dash.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(
        self,
        title: str,
        queries: list[str],
        *,
        kind: str = "timeseries",
        unit: str = "",
        w: int = 12,
        h: int = 8,
        description: str = "",
        overrides: list[Override] | None = None,
        thresholds: list[tuple[float | None, str]] | None = None,
        stat_last: bool = False,
        fill_opacity: float | None = None,
        step_after: bool = False,
        bars: bool = False,
        threshold_line: bool = False,
        mappings: dict[str, tuple[str, str]] | None = None,
    ) -> Any:
        panel = (
            PANELS[kind]()
            .id(self.next_id)
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .grid_pos(self.place(w, h))
            .unit(unit)
            .thresholds(
                dash_b.ThresholdsConfig()
                .mode(dash.ThresholdsMode.ABSOLUTE)
                .steps(
                    [dash.Threshold(value=v, color=c) for v, c in (thresholds or [(None, "green")])]
                )
            )
        )
        # Grafana's defaults, written out so the field config is complete in the SDK's model
        if kind == "timeseries":
            panel.line_width(1)
        elif kind == "state-timeline":
            panel.line_width(0).fill_opacity(70)
        if kind in ("timeseries", "state-timeline"):
            panel.legend(
                common_b.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            ).tooltip(
                common_b.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.NONE)
            )
        elif kind == "table":
            panel.show_header(True)
        elif kind == "bargauge":
            panel.display_mode(common.BarGaugeDisplayMode.GRADIENT).orientation(
                common.VizOrientation.HORIZONTAL
            )
        for i, query in enumerate(queries):
            panel.with_target(FluxQuery(query, chr(ord("A") + i)))
        for name, properties in overrides or []:
            panel.override_by_name(name, properties)
        if kind == "stat":  # the last value of every field; with its name when stat_last
            panel.reduce_options(
                common_b.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
            )
            panel.text_mode(
                common.BigValueTextMode.VALUE_AND_NAME
                if stat_last
                else common.BigValueTextMode.AUTO
            )
        if fill_opacity is not None:
            panel.fill_opacity(fill_opacity)
        if step_after:
            panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
        if bars:
            panel.draw_style(common.GraphDrawStyle.BARS)
        if threshold_line:
            panel.thresholds_style(
                common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
            )
        if mappings:
            panel.mappings(
                [
                    dash.ValueMap(
                        options={
                            value: dash.ValueMappingResult(text=text, color=color)
                            for value, (text, color) in mappings.items()
                        }
                    )
                ]
            )
        self.next_id += 1
        return panel


def _fixed(color: str) -> dash.DynamicConfigValue:
    return dash.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})


def fill_between(upper: str, lower: str) -> list[Override]:
    """Overrides that shade the band between two named series."""
    no_line = dash.DynamicConfigValue(id_val="custom.lineWidth", value=0)
    return [
        (
            upper,
            [
                dash.DynamicConfigValue(id_val="custom.fillBelowTo", value=lower),
                no_line,
                _fixed("blue"),
            ],
        ),
        (lower, [no_line, _fixed("blue")]),
    ]


def dashed(name: str, color: str) -> Override:
    style = dash.DynamicConfigValue(
        id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
    )
    return (name, [style, _fixed(color)])


STATE_MAPPINGS = {"0": ("offline", "red"), "1": ("degraded", "orange"), "2": ("online", "green")}


# --- template variables ------------------------------------------------------------------------


def tag_variable(name: str, label: str, tag: str, measurement: str) -> dash_b.QueryVariable:
    query = (
        'import "influxdata/influxdb/schema"\n'
        f'schema.tagValues(bucket: v.defaultBucket, tag: "{tag}",'
        f' predicate: (r) => r._measurement == "{measurement}", start: -30d)'
    )
    return (
        dash_b.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dash.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dash.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)
        .multi(False)
    )


def textbox(name: str, label: str, value: str) -> dash_b.TextBoxVariable:
    return (
        dash_b.TextBoxVariable(name)
        .label(label)
        .default_value(value)
        .current(dash.VariableOption(text=value, value=value))
    )


SITE_VAR = tag_variable("site", "Site", "site_id", "meter")


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Any],
    variables: list[Any],
    time_from: str = "now-24h",
    time_to: str = "now",
) -> dict[str, Any]:
    """The dashboard, built and validated by the SDK's model, as JSON data."""
    board = (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["derbus"])
        .timezone("browser")
        .readonly()
        .refresh("30s")
        .time(time_from, time_to)
    )
    for variable in variables:
        board.with_variable(variable)
    for panel in panels:
        board.with_panel(panel)
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data


# --- the dashboards ------------------------------------------------------------------------------


def site_overview() -> dict[str, Any]:
    lay = Layout()
    pcc = f'{SITE_FILTER} and r.device_id == "pcc"'
    panels = [
        lay.panel(
            "PCC power and limits",
            [
                mean_named(base("meter", pcc, ("p_kw",)), "pcc_p_kw"),
                constant_line("import_limit_kw", "import_limit_kw", "meter", pcc, "p_kw"),
                constant_line("export_limit_kw", "export_limit_kw", "meter", pcc, "p_kw"),
            ],
            unit="kwatt",
            w=24,
            description="Power at the point of common coupling, + import / − export, with the "
            "peak-shaving limits (dashboard variables: set them to PEAK_SHAVING_ limits).",
            overrides=[dashed("import_limit_kw", "red"), dashed("export_limit_kw", "orange")],
        ),
        lay.panel(
            "PV generation",
            [
                base("pv", SITE_FILTER, ("generation_kw", "available_kw", "limit_kw"))
                + "\n"
                + mean_window()
                + "\n"
                + by_field()
            ],
            unit="kwatt",
            w=8,
            description="AC output (positive), what the array could give, and the active limit.",
        ),
        lay.panel(
            "Load",
            [
                base("load", SITE_FILTER, ("p_kw",))
                + "\n"
                + mean_window()
                + '\n  |> keep(columns: ["_time", "_value", "device_id"])'
            ],
            unit="kwatt",
            w=8,
            description="Total site load (device `load`) and its metered parts (EV, switchable).",
        ),
        lay.panel(
            "Battery power",
            [mean_named(base("battery", SITE_FILTER, ("p_kw",)), "battery_p_kw")],
            unit="kwatt",
            w=8,
            description="+ charging / − discharging.",
        ),
        lay.panel(
            "Battery state of charge",
            [mean_named(base("battery", SITE_FILTER, ("soc_pct",)), "soc_pct")],
            unit="percent",
            w=12,
            fill_opacity=20,
        ),
        lay.panel(
            "Grid price",
            [last_by_field(base("price", SITE_FILTER, ("price_per_kwh", "feed_in_per_kwh")))],
            unit="currencyEUR",
            w=12,
            step_after=True,
            description="Import price and feed-in remuneration per kWh (time of use).",
        ),
    ]
    return dashboard(
        "derbus-site-overview",
        "derbus — site overview",
        "PCC power with its limits, PV, load, battery power and SoC, price.",
        panels,
        [
            SITE_VAR,
            textbox("import_limit_kw", "Import limit kW", "50"),
            textbox("export_limit_kw", "Export limit kW", "-50"),
        ],
    )


PEAK_SHAVING_KPI_RE = "^(time_on_limit_s|limit_events|unfixed_violation_s|unfixed_violation_kwh|month_peak_kw|plan_fallback)$"


def peak_shaving() -> dict[str, Any]:
    lay = Layout()
    pcc = f'{SITE_FILTER} and r.device_id == "pcc"'
    ps_kpi = f'{SITE_FILTER} and r.device_id == "peak_shaving"'
    panels = [
        lay.panel(
            "15-minute demand vs target",
            [
                base("meter", pcc, ("p_kw",))
                + '\n  |> aggregateWindow(every: 15m, fn: mean, createEmpty: false, timeSrc: "_start")\n'
                + named("demand_15min_kw"),
                constant_line("demand_target_kw", "demand_target_kw", "meter", pcc, "p_kw"),
            ],
            unit="kwatt",
            w=24,
            step_after=True,
            bars=True,
            fill_opacity=60,
            overrides=[dashed("demand_target_kw", "red")],
            description="Mean PCC import per 15-minute billing window against the demand target "
            "(variable; set it to PS demand_target_kw).",
        ),
        lay.panel(
            "Limit KPIs",
            [base("kpi", ps_kpi, field_re=PEAK_SHAVING_KPI_RE) + "\n  |> last()\n" + by_field()],
            kind="stat",
            w=24,
            h=5,
            description="From the peak-shaving KPI report: time on limit, limit events, violations "
            "the battery could not fix, this month's peak, whether the EMA fell back.",
            stat_last=True,
        ),
        lay.panel(
            "Battery schedule vs actual",
            [
                base(
                    "schedule",
                    f'{SITE_FILTER} and r.device_id == "battery" and r.quantity == "battery_p_kw"',
                    ("value",),
                )
                + "\n"
                + named("schedule_kw"),
                mean_named(base("battery", SITE_FILTER, ("p_kw",)), "actual_kw"),
            ],
            unit="kwatt",
            w=24,
            step_after=True,
            overrides=[dashed("schedule_kw", "purple")],
            description="The EMA's battery schedule (+ charge) reaching into the future, and the "
            "battery's measured power.",
        ),
        lay.panel(
            "Time on limit (cumulative)",
            [last_by_field(base("kpi", ps_kpi, field_re="^time_on_limit_s$"))],
            unit="s",
            w=12,
        ),
        lay.panel(
            "State of charge",
            [mean_named(base("battery", SITE_FILTER, ("soc_pct",)), "soc_pct")],
            unit="percent",
            w=12,
        ),
    ]
    return dashboard(
        "derbus-peak-shaving",
        "derbus — peak shaving",
        "Demand per 15-minute window vs target, time on limit, battery schedule vs actual.",
        panels,
        [SITE_VAR, textbox("demand_target_kw", "Demand target kW", "40")],
        time_to="now+12h",
    )


def _forecast_panel(lay: Layout, target_id: str, actual: str, title: str) -> dict[str, Any]:
    fc = (
        base("forecast", f'{SITE_FILTER} and r.target == "{target_id}"', ("p10", "p50", "p90"))
        + "\n  |> group()"
        + '\n  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        + '\n  |> keep(columns: ["_time", "p10", "p50", "p90"])'
    )
    return lay.panel(
        title,
        [fc, actual + "\n" + named("actual")],
        unit="kwatt",
        w=24,
        h=9,
        overrides=[*fill_between("p90", "p10"), dashed("p50", "blue")],
        description="Median forecast with its p10–p90 band (shaded), and what was measured.",
    )


def _mae(target_id: str, actual: str) -> str:
    return (
        'import "math"\n'
        "actual = "
        + actual.replace("\n", "\n  ")
        + '\n  |> group()\n  |> keep(columns: ["_time", "_value"])\n'
        "forecast = "
        + base("forecast", f'{SITE_FILTER} and r.target == "{target_id}"', ("p50",)).replace(
            "\n", "\n  "
        )
        + '\n  |> group()\n  |> keep(columns: ["_time", "_value"])\n'
        'join(tables: {a: actual, f: forecast}, on: ["_time"])\n'
        "  |> map(fn: (r) => ({_time: r._time, _value: math.abs(x: r._value_a - r._value_f)}))\n"
        "  |> mean()\n"
        '  |> yield(name: "mae_kw")'
    )


def forecasts() -> dict[str, Any]:
    lay = Layout()
    load_actual = (
        base("load", f'{SITE_FILTER} and r.device_id == "load"', ("p_kw",))
        + '\n  |> aggregateWindow(every: 15m, fn: mean, createEmpty: false, timeSrc: "_start")'
    )
    pv_actual = (
        base("pv", SITE_FILTER, ("generation_kw",))
        + '\n  |> aggregateWindow(every: 15m, fn: mean, createEmpty: false, timeSrc: "_start")'
    )
    panels = [
        _forecast_panel(lay, "load", load_actual, "Load: forecast vs actual"),
        _forecast_panel(lay, "pv", pv_actual, "PV: forecast vs actual"),
        lay.panel(
            "Load forecast MAE (time range)",
            [_mae("load", load_actual)],
            kind="stat",
            unit="kwatt",
            w=6,
            h=5,
            description="Mean absolute error of the median forecast against the 15-minute "
            "mean load, over the past part of the time range.",
        ),
        lay.panel(
            "PV forecast MAE (time range)",
            [_mae("pv", pv_actual)],
            kind="stat",
            unit="kwatt",
            w=6,
            h=5,
        ),
        lay.panel(
            "Forecast horizon at each point",
            [
                base("forecast", SITE_FILTER, ("horizon_h",))
                + "\n"
                + mean_window()
                + '\n  |> keep(columns: ["_time", "_value", "target"])'
            ],
            unit="h",
            w=12,
            h=5,
            description="How far ahead the stored forecast for each time was made (the latest "
            "issue overwrites earlier ones).",
        ),
    ]
    return dashboard(
        "derbus-forecasts",
        "derbus — forecasts vs actuals",
        "Load and PV forecasts (p10/p50/p90) against measurements, with running accuracy.",
        panels,
        [SITE_VAR],
        time_from="now-2d",
        time_to="now+1d",
    )


LOAD_MANAGER_KPI_RE = (
    "^(balance_wh|period_balance_wh|produced_wh|exported_wh|imported_wh|efficiency)$"
)


def load_manager() -> dict[str, Any]:
    lay = Layout()
    lm = f'{SITE_FILTER} and r.device_id == "load_manager"'
    panels = [
        lay.panel(
            "Net balance KPIs",
            [base("kpi", lm, field_re=LOAD_MANAGER_KPI_RE) + "\n  |> last()\n" + by_field()],
            kind="stat",
            w=24,
            h=5,
            stat_last=True,
            description="Settlement-period balance, energy produced / exported / imported, and "
            "self-consumption efficiency from the load manager's KPI reports.",
        ),
        lay.panel(
            "Self-consumption efficiency",
            [last_by_field(base("kpi", lm, field_re="^efficiency$"))],
            unit="percentunit",
            w=12,
        ),
        lay.panel(
            "Period balance",
            [last_by_field(base("kpi", lm, field_re="^(period_balance_wh|balance_wh)$"))],
            unit="watth",
            w=12,
        ),
        lay.panel(
            "Switchable loads",
            [
                base("load", f"{SITE_FILTER} and r.device_id =~ /^(load1|load2|ev)$/", ("on",))
                + "\n"
                + mean_window(fn="last")
                + '\n  |> keep(columns: ["_time", "_value", "device_id"])'
            ],
            kind="state-timeline",
            w=24,
            h=6,
            mappings={"0": ("off", "gray"), "1": ("on", "green")},
            description="Relay state of the loads the load manager switches.",
        ),
        lay.panel(
            "Switchable load power vs PV",
            [
                base("load", f"{SITE_FILTER} and r.device_id =~ /^(load1|load2|ev)$/", ("p_kw",))
                + "\n"
                + mean_window()
                + '\n  |> keep(columns: ["_time", "_value", "device_id"])',
                mean_named(base("pv", SITE_FILTER, ("generation_kw",)), "pv_kw"),
            ],
            unit="kwatt",
            w=24,
        ),
    ]
    return dashboard(
        "derbus-load-manager",
        "derbus — load manager",
        "Net-balance KPIs, switched loads and their power against PV.",
        panels,
        [SITE_VAR],
    )


def feeder() -> dict[str, Any]:
    lay = Layout()
    fid = 'r.feeder_id == "${feeder}"'
    panels = [
        lay.panel(
            "Highest and lowest bus voltage",
            [
                base("feeder_voltage", fid, ("v_pu",))
                + "\n  |> group()\n"
                + mean_window(fn="max")
                + "\n"
                + named("v_max_pu"),
                base("feeder_voltage", fid, ("v_pu",))
                + "\n  |> group()\n"
                + mean_window(fn="min")
                + "\n"
                + named("v_min_pu"),
            ],
            unit="none",
            w=24,
            thresholds=[(None, "green"), (1.05, "red")],
            threshold_line=True,
            description="Across every bus and phase of the feeder; red line at 1.05 pu.",
        ),
        lay.panel(
            "Buses above 1.04 pu (latest)",
            [
                base("feeder_voltage", fid, ("v_pu",))
                + "\n  |> last()\n  |> filter(fn: (r) => r._value > 1.04)"
                + '\n  |> group()\n  |> keep(columns: ["bus", "phase", "_value"])\n  |> sort(columns: ["_value"], desc: true)\n  |> limit(n: 20)'
            ],
            kind="table",
            w=12,
            h=9,
        ),
        lay.panel(
            "PV curtailment",
            [
                base("feeder_pv", fid, ("available_kw", "output_kw", "curtailed_kw"))
                + "\n"
                + mean_window(fn="mean")  # per PV system, on common windows
                + '\n  |> group(columns: ["_field"])'
                + "\n  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)\n"
                + by_field()
            ],
            unit="kwatt",
            w=12,
            h=9,
            description="Feeder-wide PV available, produced and curtailed (sum over systems).",
        ),
        lay.panel(
            "Curtailment per PV system (latest)",
            [
                base("feeder_pv", fid, ("curtailed_kw",))
                + '\n  |> last()\n  |> group()\n  |> keep(columns: ["pv_id", "_value"])\n  |> sort(columns: ["_value"], desc: true)'
            ],
            kind="bargauge",
            unit="kwatt",
            w=12,
            h=9,
            description="Fairness: curtailment should be shared, not loaded on the feeder's end.",
        ),
        lay.panel(
            "Voltage coordinator KPIs",
            [
                base("kpi", 'r.device_id == "voltage_coordinator"', field_re=".+")
                + "\n  |> last()\n"
                + by_field()
            ],
            kind="stat",
            w=12,
            h=9,
        ),
    ]
    return dashboard(
        "derbus-feeder",
        "derbus — feeder voltages and PV curtailment",
        "Bus voltages of a feeder and the PV curtailment that keeps them in band.",
        panels,
        [tag_variable("feeder", "Feeder", "feeder_id", "feeder_voltage")],
        time_from="now-6h",
    )


CLOUD_SYNC_KPI_RE = "^(pending_rows|oldest_age_s|fill_pct|rows_in_per_s|rows_out_per_s)$"


def platform_health() -> dict[str, Any]:
    lay = Layout()
    telemetry = " or ".join(
        f'r._measurement == "{m}"' for m in ("meter", "pv", "battery", "load", "price")
    )
    panels = [
        lay.panel(
            "Service status",
            [
                base("service_status", "", ("state_code",))
                + "\n"
                + mean_window(fn="last")
                + '\n  |> keep(columns: ["_time", "_value", "service"])'
            ],
            kind="state-timeline",
            w=24,
            h=8,
            mappings=STATE_MAPPINGS,
            description="online / degraded / offline per service (offline includes the broker's "
            "last will after a crash).",
        ),
        lay.panel(
            "Telemetry messages per minute",
            [
                "from(bucket: v.defaultBucket)\n"
                "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
                f"  |> filter(fn: (r) => {telemetry})\n"
                '  |> filter(fn: (r) => r._field == "p_kw" or r._field == "generation_kw" or r._field == "price_per_kwh")\n'
                '  |> group(columns: ["_measurement"])\n'
                "  |> aggregateWindow(every: 1m, fn: count, createEmpty: true)\n"
                '  |> keep(columns: ["_time", "_value", "_measurement"])'
            ],
            unit="none",
            w=12,
            description="Stored telemetry points per minute and kind (all sites).",
        ),
        lay.panel(
            "Dead letters",
            [
                base("dead_letter", "", ("count",))
                + '\n  |> group(columns: ["service"])\n'
                + "  |> aggregateWindow(every: 5m, fn: sum, createEmpty: false)\n"
                + '  |> keep(columns: ["_time", "_value", "service"])'
            ],
            w=12,
            bars=True,
            fill_opacity=80,
            description="Payloads a service could not decode or validate, per service.",
        ),
        lay.panel(
            "Cloud sync backlog",
            [
                last_by_field(
                    base(
                        "kpi",
                        'r.device_id == "cloud_sync"',
                        field_re="^(pending_rows|oldest_age_s)$",
                    )
                )
            ],
            w=12,
            description="Rows waiting in the outbox and the age of the oldest one (s).",
        ),
        lay.panel(
            "Cloud sync figures",
            [
                base("kpi", 'r.device_id == "cloud_sync"', field_re=CLOUD_SYNC_KPI_RE)
                + "\n  |> last()\n"
                + by_field()
            ],
            kind="stat",
            w=12,
            stat_last=True,
        ),
    ]
    return dashboard(
        "derbus-platform-health",
        "derbus — platform health",
        "Service status, message rates, dead letters and the cloud sync backlog.",
        panels,
        [],
        time_from="now-6h",
    )


DASHBOARDS = {
    "site-overview": site_overview,
    "peak-shaving": peak_shaving,
    "forecasts": forecasts,
    "load-manager": load_manager,
    "feeder": feeder,
    "platform-health": platform_health,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
