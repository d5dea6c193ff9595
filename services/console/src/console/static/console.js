// derbus console: live pages over server-sent events, charts with uPlot (vendored, no CDN).
(function () {
  "use strict";
  const D = (window.derbus = {});
  const fmt = (v, d) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
  const DIGITS = { pcc_kw: 2, pv_kw: 2, load_kw: 2, battery_kw: 2, soc_pct: 1, price_per_kwh: 3 };
  const COLOURS = { pcc: "#1f4e79", pv: "#b8860b", load: "#6a1b9a", battery: "#2e7d32", soc: "#555555" };

  function listen(url, onData) {
    const source = new EventSource(url);
    source.onmessage = (e) => onData(JSON.parse(e.data));
    window.addEventListener("beforeunload", () => source.close());
    return source;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function width(node) {
    return Math.max(320, Math.min(1100, node.clientWidth || 900));
  }

  // --- fleet --------------------------------------------------------------------------------
  function fleetRow(site) {
    const row = el("tr", { id: "site-" + site });
    const head = el("th", { scope: "row" });
    head.appendChild(el("a", { href: "/sites/" + encodeURIComponent(site) }, site));
    row.appendChild(head);
    for (const k of ["pcc_kw", "pv_kw", "battery_kw", "soc_pct", "price_per_kwh", "ts"]) {
      row.appendChild(el("td", { "data-k": k }, "—"));
    }
    const body = document.getElementById("fleet-body");
    const rows = Array.from(body.children);
    const after = rows.find((r) => r.id.slice(5) > site);
    body.insertBefore(row, after || null);
    document.getElementById("site-count").textContent = "(" + body.children.length + ")";
    return row;
  }

  function setCells(row, values) {
    for (const cell of row.querySelectorAll("[data-k]")) {
      const k = cell.dataset.k;
      const text = k === "ts" ? (values.ts ? values.ts.slice(11, 19) : "—") : fmt(values[k], DIGITS[k]);
      if (cell.textContent !== text) cell.textContent = text;
    }
  }

  function services(rows) {
    const body = document.getElementById("services-body");
    body.replaceChildren(
      ...rows.map((s) => {
        const row = el("tr", { id: "svc-" + s.service });
        row.appendChild(el("th", { scope: "row" }, s.service));
        const state = el("td");
        state.appendChild(el("span", { class: "state state-" + s.state }, s.state));
        row.appendChild(state);
        row.appendChild(el("td", {}, s.reason));
        row.appendChild(el("td", {}, String(s.dead_letters)));
        row.appendChild(el("td", {}, s.api));
        return row;
      })
    );
  }

  D.fleet = function () {
    listen("/events/fleet", (ev) => {
      for (const [site, values] of Object.entries(ev.sites || {})) {
        setCells(document.getElementById("site-" + site) || fleetRow(site), values);
      }
      if (ev.services) services(ev.services);
    });
  };

  // --- site ---------------------------------------------------------------------------------
  function liveChart(node, rows) {
    const cols = [[], [], [], [], [], []];
    for (const r of rows) r.forEach((v, i) => cols[i].push(v));
    const opts = {
      width: width(node), height: 280,
      series: [
        {},
        { label: "PCC kW", stroke: COLOURS.pcc, width: 2 },
        { label: "PV kW", stroke: COLOURS.pv, width: 2 },
        { label: "load kW", stroke: COLOURS.load, width: 1.5 },
        { label: "battery kW", stroke: COLOURS.battery, width: 1.5 },
        { label: "SoC %", stroke: COLOURS.soc, dash: [4, 4], scale: "%" },
      ],
      axes: [{}, { label: "kW" }, { side: 1, scale: "%", label: "SoC %", grid: { show: false } }],
      scales: { "%": { range: [0, 100] } },
    };
    return { plot: new uPlot(opts, cols, node), cols: cols };
  }

  function bandChart(node, plans) {
    const load = plans.load, pv = plans.pv;
    const t = load.t.length ? load.t : pv.t;
    if (!t.length) return null;
    const pick = (s, key) => (s.t.length === t.length ? s[key] : t.map(() => null));
    const data = [t, pick(load, "p50"), pick(load, "low"), pick(load, "high"), pick(pv, "p50"), pick(pv, "low"), pick(pv, "high")];
    const opts = {
      width: width(node), height: 260,
      series: [
        {},
        { label: "load P50 kW", stroke: COLOURS.load, width: 2 },
        { label: "load P10", stroke: COLOURS.load, dash: [3, 3], width: 1 },
        { label: "load P90", stroke: COLOURS.load, dash: [3, 3], width: 1 },
        { label: "PV P50 kW", stroke: COLOURS.pv, width: 2 },
        { label: "PV P10", stroke: COLOURS.pv, dash: [3, 3], width: 1 },
        { label: "PV P90", stroke: COLOURS.pv, dash: [3, 3], width: 1 },
      ],
      bands: [
        { series: [3, 2], fill: "rgba(106,27,154,0.15)" },
        { series: [6, 5], fill: "rgba(184,134,11,0.18)" },
      ],
      axes: [{}, { label: "kW" }],
    };
    return new uPlot(opts, data, node);
  }

  function scheduleChart(node, plans) {
    const s = plans.schedule;
    if (!s.t.length) return null;
    const soc = s.t.map((_, i) => (plans.soc_kwh && i < plans.soc_kwh.length ? plans.soc_kwh[i] : null));
    const opts = {
      width: width(node), height: 220,
      series: [
        {},
        { label: "battery kW (+ charge)", stroke: COLOURS.battery, width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "stored kWh", stroke: COLOURS.soc, dash: [4, 4], scale: "kWh" },
      ],
      axes: [{}, { label: "kW" }, { side: 1, scale: "kWh", label: "kWh", grid: { show: false } }],
    };
    return new uPlot(opts, [s.t, s.p50, soc], node);
  }

  function peakBar(plans, peak) {
    const svg = document.getElementById("peak-bar");
    if (!svg) return;
    const marks = [["month peak", peak, "#1f4e79"], ["demand target", plans.demand_target_kw, "#ef6c00"], ["import limit", plans.import_limit_kw, "#c62828"]];
    const top = Math.max(1, ...marks.map((m) => m[1] || 0)) * 1.1;
    const x = (v) => 10 + (580 * v) / top;
    const parts = [];
    if (peak !== null && peak !== undefined) parts.push(`<rect x="10" y="8" height="16" width="${Math.max(1, x(peak) - 10)}" fill="#1f4e79"></rect>`);
    for (const [label, v, colour] of marks.slice(1)) {
      if (v === null || v === undefined) continue;
      parts.push(`<line x1="${x(v)}" x2="${x(v)}" y1="2" y2="30" stroke="${colour}" stroke-width="3"></line><text x="${Math.min(x(v), 540)}" y="42" font-size="11" fill="#222">${label} ${v}</text>`);
    }
    svg.innerHTML = parts.join("");
  }

  function logRow(e) {
    const row = el("tr");
    const what = e.kind === "set" ? `${e.target} = ${e.value} ${e.unit}, ttl ${e.ttl_s} s, ${e.priority}` : e.status + (e.reason ? " — " + e.reason : "");
    row.appendChild(el("td", {}, (e.ts || "").slice(11, 19)));
    row.appendChild(el("td", {}, e.kind));
    row.appendChild(el("td", {}, e.device_id));
    row.appendChild(el("td", { class: e.kind === "ack" ? "ack ack-" + e.status : "" }, what));
    const id = el("td");
    id.appendChild(el("code", {}, (e.setpoint_id || "").slice(0, 12)));
    row.appendChild(id);
    row.appendChild(el("td", {}, e.source));
    return row;
  }

  const acks = {};
  function fillAcks() {
    for (const span of document.querySelectorAll(".ack-pending[data-setpoint]")) {
      const ack = acks[span.dataset.setpoint];
      if (!ack) continue;
      span.textContent = ack.status + (ack.reason ? " — " + ack.reason : "") + (ack.applied_value !== null && ack.applied_value !== undefined ? " (applied " + ack.applied_value + ")" : "");
      span.className = "ack ack-" + ack.status;
    }
  }

  D.site = function (site) {
    const enc = encodeURIComponent(site);
    let live = null, fc = null, sch = null;
    let plans = null;
    const loadPlans = () =>
      fetch(`/api/sites/${enc}/plans`).then((r) => r.json()).then((p) => {
        plans = p;
        const fcNode = document.getElementById("forecast-chart");
        const schNode = document.getElementById("schedule-chart");
        if (fc) fc.destroy();
        if (sch) sch.destroy();
        fc = bandChart(fcNode, p);
        sch = scheduleChart(schNode, p);
        document.getElementById("fc-note").textContent = fc ? `issued ${p.load.issued || p.pv.issued} by ${p.load.model || p.pv.model || "?"}` : "no forecast on the bus yet";
        document.getElementById("sch-note").textContent = sch ? `plan status: ${p.schedule_status || "?"}, issued ${p.schedule.issued}` : "no battery schedule on the bus yet";
        for (const [id, key] of [["demand-target", "demand_target_kw"], ["import-limit", "import_limit_kw"]]) document.getElementById(id).textContent = fmt(p[key], 2);
        peakBar(p, p.month_peak_kw);
      });
    fetch(`/api/sites/${enc}/history`).then((r) => r.json()).then((h) => {
      live = liveChart(document.getElementById("live-chart"), h.rows);
    });
    loadPlans();
    document.body.addEventListener("htmx:afterSwap", fillAcks);
    listen(`/events/site/${enc}`, (ev) => {
      for (const [k, v] of Object.entries(ev.values || {})) {
        const node = document.getElementById("v-" + k);
        if (!node) continue;
        const text = k === "ts" ? (v ? v.slice(11, 19) : "—") : fmt(v, DIGITS[k]);
        if (node.textContent !== text) node.textContent = text;
      }
      if (ev.month_peak_kw !== undefined) {
        document.getElementById("month-peak").textContent = fmt(ev.month_peak_kw, 2);
        if (plans) peakBar(plans, ev.month_peak_kw);
      }
      if (ev.rows && live) {
        for (const r of ev.rows) r.forEach((v, i) => live.cols[i].push(v));
        live.plot.setData(live.cols);
      }
      if (ev.log) {
        const body = document.getElementById("log-body");
        for (const e of ev.log) {
          body.insertBefore(logRow(e), body.firstChild);
          if (e.kind === "ack") acks[e.setpoint_id] = e;
        }
        while (body.children.length > 30) body.removeChild(body.lastChild);
        fillAcks();
      }
      if (ev.plans_changed) loadPlans();
    });
  };

  // --- decisions ----------------------------------------------------------------------------
  D.decisions = function () {
    const node = document.getElementById("decisions-chart");
    const data = document.getElementById("decisions-data");
    if (!node || !data) return;
    const c = JSON.parse(data.textContent);
    const opts = {
      width: width(node), height: 300,
      series: [
        {},
        { label: "grid kW (+ buy)", stroke: "#1f4e79", fill: "rgba(31,78,121,0.25)", paths: uPlot.paths.bars({ size: [0.6, 40] }) },
        { label: "net load kW (no battery)", stroke: "#6a1b9a", width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "battery kW (+ store)", stroke: "#2e7d32", width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "price /kWh", stroke: "#c62828", width: 2, dash: [5, 3], scale: "price", paths: uPlot.paths.stepped({ align: 1 }) },
      ],
      axes: [{}, { label: "kW" }, { side: 1, scale: "price", label: "price /kWh", grid: { show: false } }],
    };
    new uPlot(opts, [c.t, c.grid, c.net, c.battery, c.price], node);
  };

  // --- feeder -------------------------------------------------------------------------------
  D.feeder = function () {
    listen("/events/feeder", (ev) => {
      if (ev.step === null || ev.step === undefined) return;
      document.getElementById("feeder-step").textContent = ev.step;
      document.getElementById("feeder-vmax").textContent = fmt(ev.v_max_pu, 4);
      document.getElementById("feeder-pv").textContent = fmt(ev.pv_output_kw, 0);
      document.getElementById("feeder-pv-avail").textContent = fmt(ev.pv_available_kw, 0);
      for (const [bus, colour] of Object.entries(ev.colours)) {
        const c = document.getElementById("before-" + bus);
        if (c && c.getAttribute("fill") !== colour) c.setAttribute("fill", colour);
      }
    });
  };
})();
