"""The console's pages, live event streams and form endpoints (server-rendered Jinja + HTMX)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from console import planner
from console.api_models import History, Plans
from console.apis import Apis, UpstreamError
from console.settings import Settings
from console.state import FEEDER, FLEET, ConsoleState, bus_max_v, site_channel
from console.views import FeederDrawing, decide, feeder_colours, pv_by_bus, series_columns
from derbus import topics
from derbus.http import content, errors
from derbus.messages import SETPOINT_UNITS, Priority, SetpointCommand, utcnow
from derbus.service import Service

NAME = "console"
KEEPALIVE_S = 15.0
CLOSE = "\x00close"
"""Put on a page's queue when the console stops: its stream ends."""
DEFAULT_DEVICE = {
    "battery_p_kw": "battery",
    "pv_limit_kw": "pv",
    "pv_limit_pct": "pv",
    "load_on": "load1",
    "load_p_kw": "load1",
}
PAGES = (
    ("fleet", "Fleet", "/fleet"),
    ("site", "Site", "/site"),
    ("decisions", "Decisions", "/decisions"),
    ("planner", "Neighbourhood planner", "/planner"),
    ("feeder", "Feeder", "/feeder"),
)


def token_problem(
    settings: Settings, request: Request, form: dict[str, str]
) -> tuple[int, str] | None:
    """Why a state-changing call is refused: (401, missing) or (403, wrong), None when allowed.

    The token comes from the form's `token` field or an `Authorization: Bearer` header.
    """
    token = settings.api_token
    if token is None:
        return None
    given = form.get("token", "")
    header = request.headers.get("authorization", "")
    if not given and header.lower().startswith("bearer "):
        given = header[7:]
    if not given:
        return 401, "a token is required"
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return 403, "wrong token"
    return None


def templates() -> Environment:
    """The page templates (autoescaped)."""
    env = Environment(
        loader=PackageLoader("console", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["kw"] = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"
    env.filters["tojson_attr"] = lambda v: json.dumps(v, allow_nan=False)
    return env


def _static_dir() -> Path:
    return Path(str(resources.files("console") / "static"))


class Pages:
    """Renders the pages from the console's state (one instance per service)."""

    def __init__(self, service: Service[Settings, ConsoleState], apis: Apis) -> None:
        self.service = service
        self.apis = apis
        self.env = templates()
        self.drawing = FeederDrawing.load(service.settings.feeder_id)

    @property
    def state(self) -> ConsoleState:
        return self.service.state

    def render(self, name: str, page: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            pages=PAGES, page=page, sites=sorted(self.state.sites), **context
        )
        return HTMLResponse(html, status_code=status_code)

    def fragment(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status_code)

    # --- site ------------------------------------------------------------------------------
    def limits(self) -> dict[str, float | None]:
        config = (self.state.rest.get("peak_shaving.config") or {}).get("config", {})
        return {
            "import_limit_kw": config.get("import_limit_kw"),
            "demand_target_kw": config.get("demand_target_kw"),
            "export_limit_kw": config.get("export_limit_kw"),
        }

    def plans(self, site_id: str) -> dict[str, Any]:
        view = self.state.sites.get(site_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen on the bus")
        schedule = view.schedule
        soc = (schedule.meta.get("soc_kwh") if schedule else None) or []
        return {
            "load": series_columns(view.forecasts.get("load")),
            "pv": series_columns(view.forecasts.get("pv")),
            "schedule": series_columns(schedule),
            "schedule_status": schedule.meta.get("plan_status") if schedule else None,
            "soc_kwh": soc,
            "month_peak_kw": view.month_peak_kw,
            **self.limits(),
        }

    def setpoint_form(self, site_id: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        defaults = {
            "target": "battery_p_kw",
            "device_id": "battery",
            "value": "",
            "ttl_s": "60",
            "priority": "manual",
        }
        return self.fragment(
            "_setpoint_form.html",
            status_code=status_code,
            site_id=site_id,
            targets=list(SETPOINT_UNITS),
            priorities=[p.value for p in Priority],
            form={**defaults, **context.pop("form", {})},
            errors=context.pop("errors", {}),
            **context,
        )

    async def send_setpoint(self, site_id: str, form: dict[str, str]) -> HTMLResponse:
        """Validate and publish (token checked before); the form with the sent id or the errors."""
        errors: dict[str, str] = {}
        device = form.get("device_id", "").strip()
        try:
            topics.validate_id("device_id", device)
        except ValueError as err:
            errors["device_id"] = str(err)
        target = form.get("target", "")
        try:
            command = SetpointCommand(
                ts=utcnow(),
                source=NAME,
                target=target,  # type: ignore[arg-type]
                value=form.get("value", ""),  # type: ignore[arg-type]
                unit=SETPOINT_UNITS.get(target, "?"),
                ttl_s=form.get("ttl_s", ""),  # type: ignore[arg-type]
                priority=form.get("priority", ""),  # type: ignore[arg-type]
            )
        except ValidationError as err:
            for e in err.errors():
                field = str(e["loc"][0]) if e["loc"] else "value"
                errors[field if field in form else "value"] = e["msg"]
        if errors:
            return self.setpoint_form(site_id, 422, form=form, errors=errors)
        await self.service.publish(topics.SETPOINT, command, site_id=site_id, device_id=device)
        return self.setpoint_form(site_id, form=form, sent=command, device=device)

    # --- decisions -------------------------------------------------------------------------
    def decisions(self, site_id: str) -> HTMLResponse:
        view = self.state.sites.get(site_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen on the bus")
        load = view.forecasts.get("load")
        now = (
            view.ts
            or (view.schedule.start if view.schedule else None)
            or (load.start if load else None)
        )
        result = None
        if now is not None:
            result = decide(
                start=now,
                load=load,
                pv=view.forecasts.get("pv"),
                schedule=view.schedule,
                tariff=self.service.settings.tariff,
                month_peak_kw=view.month_peak_kw,
            )
        chart = None
        if result is not None:
            chart = {
                "t": [h.start.timestamp() for h in result.hours],
                "price": [h.price_per_kwh for h in result.hours],
                "net": [h.net_load_kw for h in result.hours],
                "battery": [h.battery_kw for h in result.hours],
                "grid": [h.grid_kw for h in result.hours],
            }
        return self.render(
            "decisions.html",
            "decisions",
            site_id=site_id,
            result=result,
            chart=chart,
            tariff=self.service.settings.tariff,
        )

    # --- feeder ----------------------------------------------------------------------------
    def feeder(self) -> HTMLResponse:
        fid = self.service.settings.feeder_id
        state = self.state.feeders.get(fid)
        voltages = self.state.rest.get("voltage.voltages") or {}
        setpoints = self.state.rest.get("voltage.setpoints") or {}
        measured = bus_max_v(state.v_pu) if state else bus_max_v(voltages.get("measured_pu", {}))
        after = bus_max_v(voltages.get("predicted_after_pu", {}))
        curtail = self.state.curtailments.get(fid)
        limits_kw: dict[str, float] = (
            dict(curtail.limits_kw) if curtail else dict(setpoints.get("limits_kw") or {})
        )
        pv_rows = []
        if self.drawing is not None:
            available = pv_by_bus(self.drawing, dict(state.pv_available_kw) if state else {})
            output = pv_by_bus(self.drawing, dict(state.pv_output_kw) if state else {})
            limit = pv_by_bus(self.drawing, limits_kw)
            rated = pv_by_bus(self.drawing, self.drawing.pv_kw)
            for bus in sorted(rated, key=lambda b: (len(b), b)):
                pv_rows.append(
                    {
                        "bus": bus,
                        "rated_kw": rated[bus],
                        "available_kw": available.get(bus),
                        "output_kw": output.get(bus),
                        "limit_kw": limit.get(bus),
                        "v_before": measured.get(bus),
                        "v_after": after.get(bus),
                    }
                )
        return self.render(
            "feeder.html",
            "feeder",
            feeder_id=fid,
            drawing=self.drawing,
            geometry=self.drawing.svg() if self.drawing else None,
            before=feeder_colours(measured),
            after=feeder_colours(after),
            v_before=measured,
            v_after=after,
            state=state,
            voltages=voltages,
            setpoints=setpoints,
            pv_rows=pv_rows,
            curtailment=curtail,
            v_max_pu=voltages.get("v_max_pu", 1.05),
        )

    # --- planner ---------------------------------------------------------------------------
    @property
    def scenario_dir(self) -> Path:
        return self.service.settings.data_dir / "scenarios"

    @property
    def results_dir(self) -> Path:
        return self.service.settings.data_dir / "results"

    def planner(
        self, scenario: dict[str, Any], status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        run = {
            "algorithm": "milp",
            "runs": "2",
            "seed": "1",
            "pv_variation_pct": "20",
            "window_jitter_steps": "1",
        }
        run.update(context.pop("run", {}))
        ctx = dict(
            s=planner.scenario_to_fields(scenario),
            errors=context.pop("errors", {}),
            token=context.pop("token", ""),
            saved=planner.saved_names(self.scenario_dir),
            run=run,
            algorithms=(
                ("milp", "MILP (optimal)"),
                ("greedy", "greedy"),
                ("earliest", "earliest start"),
            ),
            **context,
        )
        if context.get("fragment"):
            return self.fragment("_planner_editor.html", status_code=status_code, **ctx)
        return self.render("planner.html", "planner", status_code=status_code, **ctx)

    async def planner_action(self, form: dict[str, str]) -> HTMLResponse:
        """One editor action: add/remove, check, save or run; the editor again, errors placed."""
        action = form.get("action", "check")
        scenario, errors = planner.form_to_scenario(form)
        render = functools.partial(self.planner, token=form.get("token", ""))
        known = planner.known_fields(form)
        run = planner.run_fields(form)
        kind, _, arg = action.partition(":")
        if kind == "add_house":
            planner.add_house(scenario)
        elif kind == "add_device":
            planner.add_device(scenario, int(arg))
        elif kind == "add_job":
            planner.add_job(scenario, int(arg))
        elif kind == "remove":
            planner.remove(scenario, arg)
        if kind not in ("check", "save", "run") or errors:
            return render(scenario, 422 if errors else 200, errors=errors, run=run, fragment=True)
        try:
            if kind == "run":
                body = {"scenario": scenario, **run}
                results = await self.apis.request(
                    "POST",
                    "load_manager",
                    "/planner/simulate",
                    body,
                    self.service.settings.planner_timeout_s,
                )
                rid = uuid.uuid4().hex[:12]
                self.results_dir.mkdir(parents=True, exist_ok=True)
                (self.results_dir / f"{rid}.json").write_text(json.dumps(results))
                return render(scenario, run=run, results=results, rid=rid, fragment=True)
            await self.apis.request("POST", "load_manager", "/planner/check", scenario)
            if kind == "save":
                try:
                    planner.save(self.scenario_dir, str(scenario.get("name", "")), scenario)
                except ValueError as err:
                    return render(scenario, 422, errors={"name": str(err)}, run=run, fragment=True)
                return render(
                    scenario, run=run, notice=f"saved as {scenario['name']}", fragment=True
                )
            return render(scenario, run=run, notice="the neighbourhood is valid", fragment=True)
        except UpstreamError as err:
            if err.status == 422:
                errors = planner.field_errors(err.detail, known, strip=("scenario",))
                run_errors = {k: v for k, v in errors.items() if k in planner.RUN_FIELDS}
                return render(
                    scenario, 422, errors={**errors, **run_errors}, run=run, fragment=True
                )
            return render(scenario, 502, errors={"form": str(err)}, run=run, fragment=True)

    async def planner_import(self, files: dict[str, list[UploadFile]]) -> HTMLResponse:
        """Import CoSSMic files through the load manager; the editor with the scenario."""

        async def text(upload: UploadFile) -> str:
            return (await upload.read()).decode("utf-8", errors="replace")

        hood = [f for f in files.get("neighbourhood", []) if f.filename]
        jobs = [f for f in files.get("jobs", []) if f.filename]
        if not hood:
            return self.planner(
                planner.new_scenario(""),
                422,
                fragment=True,
                errors={"neighbourhood": "choose a neighbourhood XML file"},
            )
        body: dict[str, Any] = {"neighbourhood_xml": await text(hood[0])}
        if jobs:
            body["jobs_text"] = await text(jobs[0])
            body["jobs_format"] = (
                "xml" if (jobs[0].filename or "").lower().endswith(".xml") else "csv"
            )
        body["profiles"] = {}
        for f in files.get("profiles", []):
            if f.filename:
                content = await text(f)
                name = Path(f.filename).name
                body["profiles"][f"profiles/{name}"] = content
                body["profiles"][name] = content
        body["pv"] = {
            Path(f.filename).stem: await text(f) for f in files.get("pv", []) if f.filename
        }
        try:
            scenario = await self.apis.request("POST", "load_manager", "/planner/import", body)
        except UpstreamError as err:
            mapping = {
                "neighbourhood_xml": "neighbourhood",
                "jobs_text": "jobs",
                "profiles": "profiles",
                "pv": "pv",
            }
            detail = (
                err.detail if isinstance(err.detail, list) else [{"loc": ["form"], "msg": str(err)}]
            )
            errors = {mapping.get(str(d["loc"][-1]), "form"): str(d["msg"]) for d in detail}
            return self.planner(
                planner.new_scenario(""), 422 if err.status else 502, errors=errors, fragment=True
            )
        return self.planner(scenario, notice=f"imported {scenario['name']}", fragment=True)

    def results(self, rid: str) -> dict[str, Any]:
        if not rid.isalnum():
            raise HTTPException(status_code=404, detail="no such results")
        path = self.results_dir / f"{rid}.json"
        if not path.exists():
            raise HTTPException(status_code=404, detail="no such results")
        data: dict[str, Any] = json.loads(path.read_text())
        return data


async def _events(state: ConsoleState, channel: str, first: str | None) -> AsyncIterator[str]:
    queue = state.listen(channel)
    try:
        yield "retry: 2000\n\n"
        if first is not None:
            yield f"data: {first}\n\n"
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if data == CLOSE:
                return
            yield f"data: {data}\n\n"
    finally:
        state.forget(channel, queue)


def close_streams(state: ConsoleState) -> None:
    """End every page's event stream (the console is stopping)."""
    for queues in state.listeners.values():
        for queue in queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSE)


def _stream(state: ConsoleState, channel: str, first: dict[str, Any] | None = None) -> Response:
    body = _events(state, channel, json.dumps(first) if first is not None else None)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


EVENTS = content("text/event-stream", "server-sent events, each `data:` a JSON object")


def _download(body: str, media_type: str, filename: str) -> Response:
    """`body` as a file download named `filename`."""
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def router(pages: Pages) -> APIRouter:
    """The console's routes."""
    r = APIRouter(tags=["console"])
    state = pages.state

    @r.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/fleet")

    @r.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
    def fleet() -> HTMLResponse:
        """Every site live (PCC, PV, battery, SoC) and every service's status."""
        rows = [state.sites[s].values() | {"site_id": s} for s in sorted(state.sites)]
        return pages.render("fleet.html", "fleet", rows=rows, services=state.service_rows())

    @r.get("/site", include_in_schema=False)
    def first_site() -> Response:
        if state.sites:
            return RedirectResponse(f"/sites/{sorted(state.sites)[0]}")
        return pages.render("empty.html", "site", what="site")

    @r.get("/sites/{site_id}", response_class=HTMLResponse, include_in_schema=False)
    def site(site_id: str) -> HTMLResponse:
        """A site: live chart, forecasts, battery schedule, billed peak, setpoints."""
        view = state.sites.get(site_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen on the bus")
        form = bytes(pages.setpoint_form(site_id).body).decode()
        return pages.render(
            "site.html",
            "site",
            site_id=site_id,
            v=view.values(),
            log=list(view.log)[:30],
            form=form,
            limits=pages.limits(),
            month_peak_kw=view.month_peak_kw,
        )

    @r.get("/api/sites/{site_id}/history", response_model=History, responses=errors(404))
    def history(site_id: str) -> dict[str, Any]:
        """Chart points of the last hours: [unix s, PCC, PV, load, battery kW, SoC %]."""
        view = state.sites.get(site_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen on the bus")
        return {"rows": list(view.history)}

    @r.get("/api/sites/{site_id}/plans", response_model=Plans, responses=errors(404))
    def plans(site_id: str) -> dict[str, Any]:
        """Forecasts with P10-P90, the battery schedule, the month's peak and the limits."""
        return pages.plans(site_id)

    @r.post("/sites/{site_id}/setpoints", response_class=HTMLResponse, include_in_schema=False)
    async def setpoint(site_id: str, request: Request) -> HTMLResponse:
        """Send a setpoint (token required); the form again, its ack filled in as it arrives."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        refused = token_problem(pages.service.settings, request, form)
        if refused is not None:
            return pages.setpoint_form(site_id, refused[0], form=form, errors={"token": refused[1]})
        if site_id not in state.sites:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen on the bus")
        return await pages.send_setpoint(site_id, form)

    @r.get("/decisions", include_in_schema=False)
    def first_decisions() -> Response:
        if state.sites:
            return RedirectResponse(f"/decisions/{sorted(state.sites)[0]}")
        return pages.render("empty.html", "decisions", what="site")

    @r.get("/decisions/{site_id}", response_class=HTMLResponse, include_in_schema=False)
    def decisions(site_id: str) -> HTMLResponse:
        """The next 24 hours: price, net load, the plan's buy/sell/store/hold, the bill."""
        return pages.decisions(site_id)

    @r.get("/feeder", response_class=HTMLResponse, include_in_schema=False)
    def feeder() -> HTMLResponse:
        """The feeder drawn from its bus coordinates, voltages before/after, PV limits."""
        return pages.feeder()

    @r.get("/planner", response_class=HTMLResponse, include_in_schema=False)
    def planner_page(scenario: str | None = None) -> HTMLResponse:
        """The neighbourhood planner (a saved scenario by name, else a new one)."""
        if scenario:
            try:
                data = json.loads(planner.scenario_file(pages.scenario_dir, scenario).read_text())
            except (ValueError, OSError) as err:
                raise HTTPException(status_code=404, detail=f"no scenario {scenario}") from err
        else:
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            data = planner.new_scenario(f"{day}T00:00:00Z")
        return pages.planner(data)

    @r.post("/planner/edit", response_class=HTMLResponse, include_in_schema=False)
    async def planner_edit(request: Request) -> HTMLResponse:
        """Add/remove houses, devices and jobs; check, save or run the neighbourhood."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        refused = token_problem(pages.service.settings, request, form)
        if refused is not None:
            scenario, _ = planner.form_to_scenario(form)
            return pages.planner(
                scenario,
                refused[0],
                errors={"token": refused[1]},
                fragment=True,
                token=form.get("token", ""),
            )
        return await pages.planner_action(form)

    @r.post("/planner/import", response_class=HTMLResponse, include_in_schema=False)
    async def planner_import(request: Request) -> HTMLResponse:
        """Import CoSSMic files: neighbourhood XML, jobs CSV/XML, profiles, PV predictions."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        refused = token_problem(pages.service.settings, request, fields)
        if refused is not None:
            return pages.planner(
                planner.new_scenario(""),
                refused[0],
                fragment=True,
                errors={"import_token": refused[1]},
            )
        files: dict[str, list[UploadFile]] = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):
                files.setdefault(key, []).append(value)
        return await pages.planner_import(files)

    @r.get(
        "/planner/results/{rid}.json",
        response_class=Response,
        responses={
            200: content("application/json", "the simulation's results (a download)"),
            **errors(404),
        },
    )
    def results_json(rid: str) -> Response:
        """Download a simulation's results (JSON)."""
        return _download(
            json.dumps(pages.results(rid), indent=1), "application/json", f"planner-{rid}.json"
        )

    @r.get(
        "/planner/results/{rid}.csv",
        response_class=Response,
        responses={
            200: content("text/csv", "a row per run and household (a download)"),
            **errors(404),
        },
    )
    def results_csv(rid: str) -> Response:
        """Download a simulation's results (CSV: a row per run and household)."""
        return _download(planner.results_csv(pages.results(rid)), "text/csv", f"planner-{rid}.csv")

    @r.get("/planner/results/{rid}/house", response_class=HTMLResponse, include_in_schema=False)
    def results_house(rid: str, house_id: str) -> HTMLResponse:
        """One household across the runs."""
        return pages.fragment("_planner_house.html", results=pages.results(rid), house_id=house_id)

    @r.get("/events/fleet", response_class=Response, responses={200: EVENTS})
    def events_fleet() -> Response:
        """Server-sent events: changed site values and service rows (JSON)."""
        return _stream(state, FLEET)

    @r.get("/events/site/{site_id}", response_class=Response, responses={200: EVENTS})
    def events_site(site_id: str) -> Response:
        """Server-sent events of one site: values, chart points, setpoints and acks (JSON)."""
        return _stream(state, site_channel(site_id))

    @r.get("/events/feeder", response_class=Response, responses={200: EVENTS})
    def events_feeder() -> Response:
        """Server-sent events of the feeder: step and bus colours (JSON)."""
        return _stream(state, FEEDER, state.feeder_event())

    @r.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> FileResponse:
        root = _static_dir().resolve()
        target = (root / path).resolve()
        if not target.is_file() or root not in target.parents:
            raise HTTPException(status_code=404, detail="not found")
        return FileResponse(target)

    return r
