// The dashboard, drawn from the report JSON embedded in the page (and fetched again every 30 s).
// Every figure shown carries data-figure (its name in the report) and data-value (the raw number), so what
// the page says can be checked against the JSON. Text from the log (template names) only ever goes in
// through textContent, never as HTML.
"use strict";

const SINCE = new URLSearchParams(location.search).get("since") || "month";
const PERIODS = [["month", "This month"], ["7d", "Last 7 days"], ["24h", "Last 24 hours"], ["all", "All time"]];
const PERIOD_WORDS = {month: "this month", "7d": "in the last 7 days", "24h": "in the last 24 hours",
                      all: "in total"};
const MAX_CARDS = 30;
const REFRESH_MS = 30000;
const COLORS = {local: "#2e9d5b", upstream: "#5b7fd6", failed: "#d0453a", baseline: "#b6bfcf",
                actual: "#2e9d5b"};

const fmt = {
  dollars(v) {
    if (v == null) return "n/a";
    const a = Math.abs(v), digits = a >= 1 || a === 0 ? 2 : a >= 0.01 ? 4 : 6;
    return (v < 0 ? "-$" : "$") + a.toLocaleString("en-US", {minimumFractionDigits: digits,
                                                            maximumFractionDigits: digits});
  },
  count(v) { return v == null ? "n/a" : Math.round(v).toLocaleString("en-US"); },
  share(v) { return v == null ? "n/a" : (100 * v).toFixed(1) + "%"; },
  pct(v) { return v == null ? "n/a" : v.toFixed(1) + "%"; },
  ms(v) {
    if (v == null) return "n/a";
    const digits = v >= 100 ? 0 : 1;
    return v.toLocaleString("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits}) + " ms";
  },
  score(v) { return v == null ? "n/a" : v.toFixed(3); },
  text(v) { return v == null || v === "" ? "-" : String(v); },
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) if (value != null) node.setAttribute(key, value);
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function fig(name, value, format, attrs, tag = "span") {
  const raw = value == null ? "" : String(value);
  return el(tag, {...attrs, "data-figure": name, "data-value": raw}, format(value));
}

function tile(label, big, ...small) {
  return el("div", {class: "tile"}, el("div", {class: "label"}, label), el("div", {class: "big"}, ...big),
            el("div", {class: "small"}, ...small));
}

function withClass(node, name) {
  node.classList.add(name);
  return node;
}

function renderHeadline(totals) {
  const words = PERIOD_WORDS[SINCE] || "since " + SINCE;
  const saved = totals.input_tokens_before - totals.input_tokens_after;
  document.getElementById("headline").replaceChildren(
    tile("Saved " + words, [fig("saved_vs_cached", totals.saved_vs_cached, fmt.dollars)],
         "vs the cached baseline; ", fig("saved_vs_uncached", totals.saved_vs_uncached, fmt.dollars),
         " vs uncached"),
    tile("Input tokens saved", [fig("input_tokens_saved", saved, fmt.count)],
         fig("input_token_reduction_pct", totals.input_token_reduction_pct, fmt.pct), " fewer: ",
         fig("input_tokens_before", totals.input_tokens_before, fmt.count), " → ",
         fig("input_tokens_after", totals.input_tokens_after, fmt.count)),
    tile("Served locally", [fig("local_share", totals.local_share, fmt.share)],
         fig("served_locally", totals.served_locally, fmt.count), " of ",
         fig("served", totals.served, fmt.count), " answered requests"),
    withClass(tile("Latency p50, before → after",
         [fig("latency_p50_before_ms", totals.latency_p50_before_ms, fmt.ms), " → ",
          fig("latency_p50_after_ms", totals.latency_p50_after_ms, fmt.ms)],
         "p95 ", fig("latency_p95_before_ms", totals.latency_p95_before_ms, fmt.ms), " → ",
         fig("latency_p95_after_ms", totals.latency_p95_after_ms, fmt.ms)), "latency"),
    tile("Requests answered", [fig("served", totals.served, fmt.count)],
         fig("errors", totals.errors, fmt.count, {class: totals.errors ? "failed" : null}),
         " failed, counted apart (not in the figures above)"),
  );
}

// ---- charts: plain inline SVG ------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= value);
}

// series: [{name, color, values}]; stacked: bars on top of each other, else side by side.
function barChart(container, days, series, format, stacked) {
  const W = 560, H = 210, L = 58, R = 8, T = 10, B = 26;
  const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
  const n = days.length;
  if (!n) {
    chart.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "No requests in this period"));
    container.replaceChildren(chart);
    return;
  }
  const totals = days.map((_, i) => stacked ? series.reduce((s, x) => s + (x.values[i] || 0), 0)
                                            : Math.max(...series.map((x) => x.values[i] || 0)));
  const top = niceMax(Math.max(...totals));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (const v of [0, top / 2, top]) {
    chart.append(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ec"}));
    chart.append(svg("text", {x: L - 4, y: y(v) + 3, "text-anchor": "end"}, format(v)));
  }
  const slot = (W - L - R) / n, width = Math.max(1, slot * 0.7);
  const every = Math.ceil(n / 10);
  days.forEach((day, i) => {
    const x0 = L + slot * i + (slot - width) / 2;
    let base = 0;
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      const w = stacked ? width : width / series.length;
      const x = stacked ? x0 : x0 + w * k;
      const from = stacked ? base : 0;
      const rect = svg("rect", {x, y: y(from + v), width: Math.max(w - (stacked ? 0 : 1), 1),
                                height: Math.max(0, y(from) - y(from + v)), fill: s.color});
      rect.append(svg("title", {}, `${day} ${s.name}: ${format(v)}`));
      chart.append(rect);
      if (stacked) base += v;
    });
    if (i % every === 0) {
      chart.append(svg("text", {x: x0 + width / 2, y: H - 8, "text-anchor": "middle"}, day.slice(5)));
    }
  });
  const legend = el("div", {class: "legend"});
  for (const s of series) legend.append(el("span", {style: `background:${s.color}`}), s.name);
  container.replaceChildren(chart, legend);
}

function renderCharts(byDay) {
  const days = byDay.map((d) => d.day);
  barChart(document.getElementById("chart-requests"), days, [
    {name: "served locally", color: COLORS.local, values: byDay.map((d) => d.served_locally)},
    {name: "served upstream", color: COLORS.upstream, values: byDay.map((d) => d.served - d.served_locally)},
    {name: "failed", color: COLORS.failed, values: byDay.map((d) => d.errors)},
  ], fmt.count, true);
  barChart(document.getElementById("chart-dollars"), days, [
    {name: "cached baseline", color: COLORS.baseline, values: byDay.map((d) => d.spend_before_cached)},
    {name: "actual", color: COLORS.actual, values: byDay.map((d) => d.spend_after)},
  ], fmt.dollars, false);
}

// ---- template cards ---------------------------------------------------------------------------------
function card(t) {
  const rows = [
    ["model", fig("model_id", t.model_id, fmt.text)],
    [`gate score${t.gate_metric ? " (" + t.gate_metric + ")" : ""}`, fig("gate_score", t.gate_score, fmt.score)],
    ["shadow agreement", el("span", {}, fig("shadow_agreement", t.shadow_agreement, fmt.score), " (",
                            fig("shadow_samples", t.shadow_samples, fmt.count), ")")],
    ["requests", el("span", {}, fig("served", t.served, fmt.count),
                    t.errors ? el("span", {class: "failed"}, " +", fig("errors", t.errors, fmt.count),
                                  " failed") : null)],
    ["served locally", fig("local_share", t.local_share, fmt.share)],
    ["saved vs cached", fig("saved_vs_cached", t.saved_vs_cached, fmt.dollars)],
  ];
  const list = el("dl");
  for (const [label, value] of rows) list.append(el("dt", {}, label), el("dd", {}, value));
  return el("article", {class: "card", "data-template": t.template_id},
    el("div", {}, fig("status", t.status, fmt.text, {class: "badge " + t.status})),
    el("h3", {title: t.template_name || ""}, t.template_name || "(unnamed template)"),
    el("div", {class: "id"}, t.template_id),
    list,
    el("div", {class: "command"}, `To ${t.command_does}: `, fig("command", t.command, fmt.text, {}, "code")),
  );
}

function renderTemplates(templates) {
  const shown = templates.slice(0, MAX_CARDS);
  document.getElementById("templates").replaceChildren(...shown.map(card));
  document.getElementById("templates-empty").hidden = templates.length > 0;
  const more = document.getElementById("templates-more");
  more.hidden = templates.length <= MAX_CARDS;
  more.textContent = `and ${templates.length - MAX_CARDS} more: promptintern templates lists them all.`;
}

function renderNextStep(step) {
  const box = document.getElementById("next-step");
  box.hidden = !step;
  if (!step) return;
  document.getElementById("next-step-title").textContent = step.title;
  document.getElementById("next-step-text").textContent = step.text;
  const command = document.getElementById("next-step-command");
  command.textContent = step.command;
  command.hidden = !step.command;
}

function renderPeriods() {
  const nav = document.getElementById("periods");
  nav.replaceChildren(...PERIODS.map(([value, label]) =>
    el("a", {href: "?since=" + value, class: value === SINCE ? "current" : null}, label)));
  document.getElementById("json-link").href = "dashboard/report.json?since=" + encodeURIComponent(SINCE);
}

function render(report) {
  renderHeadline(report.totals);
  renderNextStep(report.next_step);
  renderCharts(report.by_day);
  renderTemplates(report.templates);
  const since = report.since ? report.since.slice(0, 16).replace("T", " ") + " UTC" : "the first request";
  document.getElementById("meta").textContent =
    `Requests since ${since}; computed from the log at ${report.generated_at.slice(0, 19).replace("T", " ")}` +
    ` UTC, refreshed every ${REFRESH_MS / 1000} s.`;
}

async function refresh() {
  try {
    const response = await fetch("dashboard/report.json?since=" + encodeURIComponent(SINCE),
                                 {credentials: "same-origin", cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (error) {
    // the gateway is restarting or unreachable: keep the figures shown, try again next time
  }
}

renderPeriods();
render(JSON.parse(document.getElementById("report-data").textContent));
setInterval(refresh, REFRESH_MS);
