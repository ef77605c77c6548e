/* gatewatch sidecar dashboard: plain JS, no build step, nothing loaded from outside the sidecar.
 *
 * Both pages read the sidecar's JSON (status, history, histogram, alerts, webhooks, rollouts)
 * and redraw every few seconds (?refresh=SECONDS, 0 to stop). Every number taken from /status
 * is rendered as <span class="num" data-path='[...]' data-format="..."> so what is shown can be
 * checked against the JSON it came from. Text from the JSON is only ever set as text.
 */
"use strict";

(function () {
  const base = new URL(document.querySelector('meta[name="gatewatch-base"]').content, location.href);
  const params = new URLSearchParams(location.search);
  const refreshSeconds = params.has("refresh") ? Number(params.get("refresh")) : 5;
  const PALETTE = ["#2563eb", "#d97706", "#7c3aed", "#059669", "#dc2626", "#0891b2",
    "#db2777", "#65a30d", "#475569", "#9333ea", "#ea580c", "#0d9488"];
  const ROLE_DASH = { primary: null, canary: [6, 3], pinned: [2, 3], shadow: [1, 3] };

  // ------------------------------------------------------------------------- helpers

  async function api(path, optional) {
    const response = await fetch(new URL(path, base), {
      headers: { accept: "application/json" }, cache: "no-store",
    });
    if (response.status === 404 && optional) return null;
    if (!response.ok) {
      let detail = "";
      try { detail = (await response.json()).error || ""; } catch (e) { /* not JSON */ }
      throw new Error(`GET ${path}: HTTP ${response.status} ${detail}`);
    }
    return response.json();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const FORMATS = {
    int: (v) => String(Math.round(v)),
    fraction: (v) => v.toFixed(3),
    score: (v) => v.toFixed(3),
    ms: (v) => v.toFixed(2),
    seconds: (v) => v.toFixed(1),
    count: (v) => String(v.length),
    percent: (v) => (100 * v).toFixed(1) + "%",
  };

  function dig(object, path) {
    return path.reduce((o, key) => (o === null || o === undefined ? undefined : o[key]), object);
  }

  /* A number from /status: `path` is its key path in the status JSON. */
  function num(status, path, format) {
    const value = dig(status, path);
    const known = value !== null && value !== undefined;
    return el("span", { class: "num", dataset: { path: JSON.stringify(path), format } },
      known ? FORMATS[format](value) : "—");
  }

  function plain(value, format) {
    return el("span", { class: "num" },
      value === null || value === undefined ? "—" : FORMATS[format](value));
  }

  function when(ts) {
    if (ts === null || ts === undefined) return "—";
    const date = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
    return isNaN(date) ? String(ts) : date.toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const units = [[86400, "d"], [3600, "h"], [60, "min"]];
    for (const [size, unit] of units) if (seconds >= 2 * size) return `${(seconds / size).toFixed(1)} ${unit}`;
    return `${seconds.toFixed(1)} s`;
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || text}` }, text);
  }

  function details(label, value) {
    if (value === null || value === undefined) return "—";
    return el("details", {}, el("summary", {}, label), el("pre", {}, JSON.stringify(value, null, 2)));
  }

  function table(headers, rows, attrs) {
    return el("table", Object.assign({ class: "data" }, attrs || {}),
      el("thead", {}, el("tr", {}, headers.map((h) =>
        el("th", { class: h.startsWith("#") ? "n" : null }, h.replace(/^#/, ""))))),
      el("tbody", {}, rows));
  }

  function fact(label, ...value) {
    return el("div", {}, el("dt", {}, label), el("dd", {}, value));
  }

  function showError(error) {
    const box = document.getElementById("error");
    if (error) {
      box.textContent = `Could not refresh: ${error.message || error}`;
      box.hidden = false;
      document.body.dataset.error = String(error.message || error);
    } else {
      box.hidden = true;
      delete document.body.dataset.error;
    }
  }

  function rolesOf(model, number) {
    const version = model.versions[String(number)];
    const roles = [];
    if (model.primary === number) roles.push("primary");
    if (model.canary === number) roles.push("canary");
    if ((model.shadows || []).includes(number)) roles.push("shadow");
    if (version && version.roles && version.roles.pinned > 0) roles.push("pinned");
    return roles;
  }

  function servedOf(version) {
    const roles = version.roles || {};
    return (roles.primary || 0) + (roles.canary || 0) + (roles.pinned || 0);
  }

  /* Share of the model's served (non-shadow) records answered by each version. */
  function shares(model) {
    const total = Object.values(model.versions).reduce((sum, v) => sum + servedOf(v), 0);
    const out = {};
    for (const [key, v] of Object.entries(model.versions)) out[key] = total ? servedOf(v) / total : null;
    return out;
  }

  function accuracyCell(status, path, version) {
    if (version.task === "regression") return ["MAE ", num(status, [...path, "accuracy", "mae"], "fraction")];
    return num(status, [...path, "accuracy", "accuracy"], "fraction");
  }

  function summary(status) {
    const box = document.getElementById("summary");
    box.replaceChildren(
      el("span", {}, "records ", el("b", {}, num(status, ["records"], "int"))),
      el("span", {}, "feedback ", el("b", {}, num(status, ["feedback"], "int"))),
      el("span", {}, "duplicates ", el("b", {}, num(status, ["duplicates"], "int"))),
      el("span", { title: "wall clock minus the newest record's time" }, "lag ",
        el("b", {}, duration(status.lag_seconds))),
      el("span", {}, "newest record ", el("b", {}, when(status.newest_ts))),
    );
  }

  function alertsOf(alerts, name) {
    if (!alerts) return null;
    return (alerts.active || []).filter((a) => a.model === name);
  }

  function rolloutCell(rollouts, name) {
    if (!rollouts) return el("span", { class: "empty", title: "GET /rollouts is not available" }, "—");
    const r = (rollouts.models || {})[name];
    if (!r) return el("span", { class: "empty" }, "none");
    const parts = [badge(String(r.state), "rollout")];
    if (r.step !== null && r.step !== undefined) parts.push(` step ${r.step}`);
    if (r.weight !== null && r.weight !== undefined) parts.push(` · weight `, plain(r.weight, "percent"));
    return el("span", { dataset: { rollout: r.state } }, parts);
  }

  // ------------------------------------------------------------------------- overview

  function modelCard(status, name, alerts, rollouts) {
    const model = status.models[name];
    const share = shares(model);
    const open = alertsOf(alerts, name);
    const numbers = Object.keys(model.versions).map(Number).sort((a, b) => a - b);
    const rows = numbers.map((number) => {
      const key = String(number);
      const v = model.versions[key];
      const path = ["models", name, "versions", key];
      const roles = rolesOf(model, number);
      const drift = v.feature_drift || {};
      return el("tr", { dataset: { version: key } },
        el("td", {}, `v${key}`),
        el("td", {}, roles.length ? roles.map((r) => badge(r)) : el("span", { class: "empty" }, "idle")),
        el("td", { class: "n" }, el("span", { class: "num", dataset: { share: key } },
          share[key] === null ? "—" : FORMATS.percent(share[key]))),
        el("td", { class: "n" }, num(status, [...path, "records"], "int")),
        el("td", { class: "n" }, accuracyCell(status, path, v)),
        el("td", { class: "n" }, num(status, [...path, "feature_drift", "drifting"], "count"),
          ` / ${Object.keys(drift.features || {}).length}`),
        el("td", { class: "n" }, num(status, [...path, "error_rate"], "fraction")),
        el("td", { class: "n" }, num(status, [...path, "latency_ms", "p95"], "ms")),
      );
    });
    return el("article", { class: "card", dataset: { model: name } },
      el("h2", {}, el("a", { href: `ui/models/${encodeURIComponent(name)}${location.search}` }, name)),
      el("dl", { class: "facts" },
        fact("open alerts", open === null
          ? el("span", { class: "empty", title: "GET /alerts is not available" }, "—")
          : el("span", { dataset: { alerts: String(open.length) } }, String(open.length))),
        fact("rollout", rolloutCell(rollouts, name)),
        fact("shadows", (model.shadows || []).length ? model.shadows.map((s) => `v${s}`).join(", ") : "none"),
      ),
      el("div", { class: "scroll" },
        table(["version", "roles", "#served share", "#records", "#accuracy", "#drifting", "#error rate", "#p95 ms"], rows)),
    );
  }

  async function renderOverview() {
    const [status, alerts, rollouts] = await Promise.all([
      api("status"), api("alerts", true), api("rollouts", true),
    ]);
    summary(status);
    const names = Object.keys(status.models).sort();
    const box = document.getElementById("models");
    box.replaceChildren(...(names.length
      ? names.map((name) => modelCard(status, name, alerts, rollouts))
      : [el("p", { class: "empty" }, "No prediction record read yet.")]));
  }

  // ------------------------------------------------------------------------- charts

  const charts = new Map();

  function hasData(values) {
    return values.some((v) => v !== null && v !== undefined);
  }

  /* Draw (or update) a uPlot chart; `series` is [{label, values, stroke, dash, width}]. */
  function chart(id, xs, series, options) {
    const box = document.getElementById(id);
    const opts = options || {};
    const shown = series.filter((s) => hasData(s.values));
    const existing = charts.get(id);
    const signature = JSON.stringify([shown.map((s) => [s.label, s.stroke, s.dash, s.width]), opts.kind || "line"]);
    if (!xs.length || !shown.length) {
      if (existing) existing.plot.destroy();
      charts.delete(id);
      box.replaceChildren(el("p", { class: "empty" }, opts.empty || "No data yet."));
      return;
    }
    const data = [xs, ...shown.map((s) => s.values)];
    if (existing && existing.signature === signature) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    box.replaceChildren();
    const points = { show: xs.length < 3, size: 6 };
    const config = {
      width: Math.max(box.clientWidth, 280),
      height: opts.height || 220,
      // Record times are shown in UTC everywhere on the page, as in the tables.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: {
        x: Object.assign({ time: opts.kind !== "bars" }, opts.xRange ? { range: opts.xRange } : {}),
        y: opts.yRange ? { range: opts.yRange } : {},
      },
      axes: [opts.xAxis || {}, { size: 56, values: opts.yValues }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        opts.xSeries || {},
        ...shown.map((s) => ({
          label: s.label, stroke: s.stroke, width: s.width || 1.5, dash: s.dash || undefined,
          fill: s.fill, spanGaps: true, points, paths: s.paths,
        })),
      ],
    };
    const plot = new uPlot(config, data, box);
    charts.set(id, { plot, signature });
  }

  window.addEventListener("resize", () => {
    for (const [id, { plot }] of charts) {
      const box = document.getElementById(id);
      if (box) plot.setSize({ width: Math.max(box.clientWidth, 280), height: plot.height });
    }
  });

  function colour(index) {
    return PALETTE[index % PALETTE.length];
  }

  function drawCharts(history, status, state) {
    const xs = history.t;
    const versions = history.versions.map(String);
    const colourOf = (key) => colour(versions.indexOf(key));
    const requests = [];
    for (const key of versions) {
      for (const [role, values] of Object.entries(history.requests[key] || {})) {
        requests.push({ label: `v${key} ${role}`, values, stroke: colourOf(key), dash: ROLE_DASH[role] });
      }
    }
    chart("chart-requests", xs, requests, { yValues: (u, ticks) => ticks.map((t) => String(t)) });

    const latency = [];
    for (const key of versions) {
      const l = history.latency_ms[key] || {};
      latency.push({ label: `v${key} p50`, values: l.p50 || [], stroke: colourOf(key) });
      latency.push({ label: `v${key} p95`, values: l.p95 || [], stroke: colourOf(key), dash: [6, 3] });
    }
    chart("chart-latency", xs, latency);

    const accuracy = [];
    let metric = "rolling_accuracy";
    for (const key of versions) {
      const a = history.accuracy[key];
      if (!a) continue;
      metric = a.metric || metric;
      accuracy.push({ label: `v${key}`, values: a.values, stroke: colourOf(key) });
    }
    document.getElementById("accuracy-title").textContent =
      metric === "rolling_mae" ? "Rolling MAE on labelled records" : "Rolling accuracy on labelled records";
    chart("chart-accuracy", xs, accuracy, { empty: "No labelled records yet." });

    const version = state.version;
    const features = (history.feature_drift[version]) || {};
    const drifting = new Set(((status.models[state.model] || {}).versions || {})[version]
      ?.feature_drift?.drifting || []);
    const drift = Object.entries(features).map(([name, values], i) => ({
      label: name, values, stroke: colour(i), width: drifting.has(name) ? 2.5 : 1,
    }));
    if (history.prediction_drift[version]) {
      drift.push({ label: "(prediction)", values: history.prediction_drift[version], stroke: "#111827", dash: [6, 3] });
    }
    document.getElementById("drift-title").textContent =
      version ? `Feature drift score, v${version}` : "Feature drift score";
    chart("chart-drift", xs, drift, { empty: "No drift statistics for this version." });

    const shadow = Object.entries(history.shadow_agreement).map(([key, values]) => ({
      label: `v${key}`, values, stroke: colourOf(key),
    }));
    chart("chart-shadow", xs, shadow, { empty: "No shadow version compared yet.", yRange: [0, 1] });

    chart("chart-canary", xs, [{ label: "weight", values: history.canary_weight, stroke: "#d97706",
      fill: "rgba(217, 119, 6, 0.12)" }], { empty: "No canary weight known yet.", yRange: [0, 1] });
  }

  function drawHistogram(histogram) {
    const title = document.getElementById("histogram-title");
    if (!histogram) {
      title.textContent = "Reference vs live";
      chart("chart-histogram", [], [], { empty: "Pick a feature with reference statistics." });
      return;
    }
    const { edges, reference, live, feature, version } = histogram;
    title.textContent = `Reference vs live: ${feature}, v${version} (${live.rows} live rows)`;
    const xs = reference.share.map((_, i) => i);
    const label = (i) => (edges[i] === undefined ? "" : Number(edges[i]).toPrecision(3));
    const bars = (align) => uPlot.paths.bars({ size: [0.4, 60], align });
    chart("chart-histogram", xs, [
      { label: "reference", values: reference.share, stroke: "#475569", fill: "rgba(71, 85, 105, 0.45)", paths: bars(-1) },
      { label: "live", values: live.rows ? live.share : [], stroke: "#dc2626", fill: "rgba(220, 38, 38, 0.45)", paths: bars(1) },
    ], {
      kind: "bars",
      xRange: [-0.6, xs.length - 0.4],
      yRange: [0, null],
      xSeries: { label: "bin from", value: (u, v) => (v === null ? "—" : label(v)) },
      xAxis: { values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? label(t) : "")) },
    });
  }

  // ------------------------------------------------------------------------- model page

  const state = {
    model: null, version: null, feature: null,
    window: params.has("window") ? params.get("window") : "360",
  };

  function versionCard(status, name, model, key) {
    const v = model.versions[key];
    const number = Number(key);
    const path = ["models", name, "versions", key];
    const roles = rolesOf(model, number);
    const acc = v.accuracy || {};
    const regression = v.task === "regression";
    const share = shares(model)[key];
    return el("article", { class: "card", dataset: { version: key } },
      el("h3", {}, `v${key}`, roles.map((r) => badge(r)), el("span", { class: "hint" }, v.task)),
      el("dl", { class: "facts" },
        fact("records", num(status, [...path, "records"], "int")),
        fact("served share", el("span", { class: "num", dataset: { share: key } },
          share === null ? "—" : FORMATS.percent(share))),
        fact("errors", num(status, [...path, "errors"], "int")),
        fact("error rate", num(status, [...path, "error_rate"], "fraction")),
        fact("p50 ms", num(status, [...path, "latency_ms", "p50"], "ms")),
        fact("p95 ms", num(status, [...path, "latency_ms", "p95"], "ms")),
        fact("labels", num(status, [...path, "accuracy", "labels"], "int")),
        regression
          ? [fact("MAE", num(status, [...path, "accuracy", "mae"], "fraction")),
             fact("rolling MAE", num(status, [...path, "accuracy", "rolling_mae"], "fraction"))]
          : [fact("accuracy", num(status, [...path, "accuracy", "accuracy"], "fraction")),
             fact("rolling", num(status, [...path, "accuracy", "rolling_accuracy"], "fraction")),
             fact("F1 macro", num(status, [...path, "accuracy", "f1_macro"], "fraction"))],
        fact("drifting features", num(status, [...path, "feature_drift", "drifting"], "count"),
          ` / ${Object.keys((v.feature_drift || {}).features || {}).length}`),
        fact("prediction drift", badge(v.prediction_drift.state),
          " ", num(status, [...path, "prediction_drift", "score"], "score")),
        fact("concept drift", badge(v.concept_drift.state)),
        roles.includes("shadow") || (v.shadow && v.shadow.pairs)
          ? fact("shadow agreement", num(status, [...path, "shadow", "agreement"], "fraction"),
              " over ", num(status, [...path, "shadow", "pairs"], "int"), " pairs")
          : null,
        acc.skipped ? fact("accuracy", el("span", { class: "empty" }, acc.skipped)) : null,
      ),
    );
  }

  function driftTable(status, name, key) {
    const v = (status.models[name].versions || {})[key];
    const box = document.getElementById("drift-table");
    const features = (v && v.feature_drift && v.feature_drift.features) || {};
    const names = Object.keys(features).sort((a, b) =>
      (features[b].state === "drifting") - (features[a].state === "drifting")
      || features[b].score - features[a].score);
    if (!names.length) {
      const reason = v && v.feature_drift && v.feature_drift.skipped;
      box.replaceChildren(el("caption", { class: "empty" }, reason || "No drift statistics for this version."));
      return;
    }
    if (!names.includes(state.feature)) state.feature = names[0];
    const path = ["models", name, "versions", key, "feature_drift", "features"];
    const rows = names.map((feature) => {
      const f = features[feature];
      const drifting = f.state === "drifting";
      const classes = ["selectable", drifting ? "drifting" : "", feature === state.feature ? "selected" : ""];
      return el("tr", {
        class: classes.join(" ").trim(), dataset: { feature, state: f.state },
        onclick: () => { state.feature = feature; refresh(); },
      },
      el("td", {}, feature),
      el("td", {}, badge(f.state)),
      el("td", { class: "n" }, num(status, [...path, feature, "score"], "score")),
      el("td", { class: "n" }, num(status, [...path, feature, "psi"], "score")),
      el("td", { class: "n" }, num(status, [...path, feature, "ks"], "score")),
      el("td", { class: "n" }, f.changed_at_record === null ? "—" : `#${f.changed_at_record}`));
    });
    box.replaceChildren(...table(["feature", "state", "#score", "#PSI", "#KS", "#changed at record"], rows).childNodes);
  }

  function alertsSection(alerts, name) {
    const box = document.getElementById("alerts");
    if (!alerts) {
      box.replaceChildren(el("p", { class: "empty" }, "Alerts are not available from this sidecar."));
      return [];
    }
    const active = (alerts.active || []).filter((a) => a.model === name);
    const recent = (alerts.recent || []).filter((e) => (e.data || {}).model === name);
    box.replaceChildren(
      el("h3", {}, `Open (${active.length})`),
      active.length
        ? table(["rule", "severity", "version", "condition", "since", "notified", "figures"],
          active.map((a) => el("tr", { dataset: { rule: a.rule } },
            el("td", {}, a.rule), el("td", {}, badge(a.severity)),
            el("td", {}, a.version === null ? "—" : `v${a.version}`), el("td", {}, a.condition),
            el("td", {}, when(a.since)), el("td", {}, a.notified ? "yes" : "not yet"),
            el("td", {}, details("figures", a.figures)))))
        : el("p", { class: "empty" }, "No open alert."),
      el("h3", {}, "Recent events"),
      recent.length
        ? table(["time", "type", "rule", "version", "figures"],
          recent.map((e) => el("tr", { dataset: { event: e.id } },
            el("td", {}, when(e.timestamp)), el("td", {}, e.type), el("td", {}, e.data.rule),
            el("td", {}, e.data.version === null ? "—" : `v${e.data.version}`),
            el("td", {}, details("figures", e.data.figures)))))
        : el("p", { class: "empty" }, "No recent event."),
    );
    return recent.map((e) => e.id);
  }

  function webhooksSection(webhooks, eventIds) {
    const box = document.getElementById("webhooks");
    if (!webhooks) {
      box.replaceChildren(el("p", { class: "empty" }, "Webhooks are not available from this sidecar."));
      return;
    }
    const ids = new Set(eventIds);
    const deliveries = (webhooks.deliveries || []).filter((d) => ids.has(d.event_id));
    const counters = webhooks.counters || {};
    box.replaceChildren(
      el("dl", { class: "facts" }, Object.entries(counters).map(([k, v]) => fact(k, String(v)))),
      deliveries.length
        ? table(["updated", "event", "target", "state", "#attempts", "#last status", "error", "response"],
          deliveries.map((d) => el("tr", { dataset: { delivery: d.event_id } },
            el("td", {}, when(d.updated)), el("td", {}, d.type), el("td", {}, d.target),
            el("td", {}, badge(d.state, d.state === "sent" ? "ok" : d.state === "pending" ? "warning" : "critical")),
            el("td", { class: "n" }, String(d.attempts)),
            el("td", { class: "n" }, d.last_status === null ? "—" : String(d.last_status)),
            el("td", {}, d.last_error || "—"),
            el("td", {}, details("response", d.response)))))
        : el("p", { class: "empty" }, "No delivery for this model's events."),
    );
  }

  function rolloutSection(rollouts, name) {
    const box = document.getElementById("rollouts");
    if (!rollouts) {
      box.replaceChildren(el("p", { class: "empty" }, "Rollouts are not available from this sidecar."));
      return;
    }
    const r = (rollouts.models || {})[name];
    if (!r) {
      box.replaceChildren(el("p", { class: "empty" }, "No rollout for this model."));
      return;
    }
    const decisions = [...(r.decisions || [])].sort((a, b) => (b.ts || 0) - (a.ts || 0));
    const weight = (d) => (d.from_weight === undefined && d.to_weight === undefined ? "—"
      : [plain(d.from_weight, "percent"), " → ", plain(d.to_weight, "percent")]);
    box.replaceChildren(
      el("dl", { class: "facts" },
        fact("state", rolloutCell(rollouts, name)),
        r.steps ? fact("steps", r.steps.map((w) => FORMATS.percent(w)).join(" → ")) : null),
      decisions.length
        ? table(["time", "decision", "version", "weight", "reason", "evidence"],
          decisions.map((d) => el("tr", { dataset: { decision: d.decision } },
            el("td", {}, when(d.ts)), el("td", {}, badge(String(d.decision), "rollout")),
            el("td", {}, d.version === null || d.version === undefined ? "—" : `v${d.version}`),
            el("td", {}, weight(d)), el("td", { class: "wrap" }, d.reason || "—"),
            el("td", {}, details("evidence", d.evidence)))))
        : el("p", { class: "empty" }, "No decision yet."),
    );
  }

  function versionPicker(model, name) {
    const select = document.getElementById("drift-version");
    const keys = Object.keys(model.versions).sort((a, b) => Number(a) - Number(b));
    if (!keys.includes(state.version)) {
      const withDrift = keys.filter((k) => Object.keys(model.versions[k].feature_drift.features || {}).length);
      const primary = model.primary === null ? null : String(model.primary);
      state.version = withDrift.includes(primary) ? primary : (withDrift[0] || keys[0] || null);
    }
    const current = [...select.options].map((o) => o.value).join(",");
    if (current !== keys.join(",")) {
      select.replaceChildren(...keys.map((k) => el("option", { value: k }, `v${k} ${rolesOf(model, Number(k)).join(" ")}`)));
    }
    select.value = state.version || "";
  }

  async function renderModel() {
    const name = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
    state.model = name;
    document.getElementById("model-name").textContent = name;
    document.title = `gatewatch · ${name}`;
    document.getElementById("json-link").href = new URL(`models/${encodeURIComponent(name)}`, base).href;
    const [status, history, alerts, webhooks, rollouts] = await Promise.all([
      api("status"), api(`history/${encodeURIComponent(name)}${state.window ? `?minutes=${state.window}` : ""}`, true),
      api("alerts", true), api("webhooks", true), api("rollouts", true),
    ]);
    summary(status);
    const model = status.models[name];
    const box = document.getElementById("versions");
    if (!model) {
      box.replaceChildren(el("p", { class: "empty" }, `No record of model ${name} yet.`));
      return;
    }
    const keys = Object.keys(model.versions).sort((a, b) => Number(a) - Number(b));
    box.dataset.model = name;
    box.replaceChildren(
      el("article", { class: "card", dataset: { model: name } },
        el("h2", {}, name),
        el("dl", { class: "facts" },
          fact("open alerts", (() => {
            const open = alertsOf(alerts, name);
            return open === null ? "—" : el("span", { dataset: { alerts: String(open.length) } }, String(open.length));
          })()),
          fact("rollout", rolloutCell(rollouts, name)))),
      ...keys.map((key) => versionCard(status, name, model, key)));
    versionPicker(model, name);
    driftTable(status, name, state.version);
    if (history) drawCharts(history, status, state);
    else for (const id of ["chart-requests", "chart-latency", "chart-accuracy", "chart-drift", "chart-shadow", "chart-canary"]) {
      chart(id, [], [], { empty: "This sidecar keeps no history." });
    }
    const key = state.version && state.feature ? `${state.version}/${state.feature}` : null;
    const histogram = key
      ? await api(`histogram/${encodeURIComponent(name)}/${state.version}/${encodeURIComponent(state.feature)}`, true)
      : null;
    drawHistogram(histogram);
    const events = alertsSection(alerts, name);
    webhooksSection(webhooks, events);
    rolloutSection(rollouts, name);
  }

  // ------------------------------------------------------------------------- refresh loop

  let running = null;
  let again = false;

  /* One render at a time; a refresh asked for during a render (a new selection) runs after it. */
  async function refresh() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      document.body.dataset.busy = "true";
      do {
        again = false;
        try {
          await (document.body.dataset.page === "model" ? renderModel() : renderOverview());
          showError(null);
          document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
          document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
          document.body.dataset.ready = "true";
        } catch (error) {
          showError(error);
        }
      } while (again);
      delete document.body.dataset.busy;
      running = null;
    })();
    return running;
  }

  async function loop() {
    await refresh();
    if (refreshSeconds > 0) setTimeout(loop, refreshSeconds * 1000);
  }

  const windowPicker = document.getElementById("window");
  if (windowPicker) {
    windowPicker.value = state.window;
    windowPicker.addEventListener("change", () => {
      state.window = windowPicker.value;
      refresh();
    });
  }
  const picker = document.getElementById("drift-version");
  if (picker) {
    picker.addEventListener("change", () => {
      state.version = picker.value;
      state.feature = null;
      refresh();
    });
  }
  loop();
})();
