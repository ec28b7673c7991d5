// The operators' sync dashboard: metric cards, hourly latency and volume charts (inline SVG), errors, companies
// and the last deliveries, refreshed every 10 seconds.

const REFRESH_MS = 10000;
const HOURS_SHOWN = 24;
const HOUR_MS = 3600 * 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

const TEXT = {
  title: "Chatwoot sync",
  cardsHeading: "Overview",
  latencyHeading: "Sync latency per hour (last 24 h)",
  volumeHeading: "Deliveries per hour (last 24 h)",
  errorsHeading: "Recent errors",
  companiesHeading: "Companies",
  deliveriesHeading: "Last deliveries",
  successRate: "Success rate",
  totalSyncs: "Total syncs",
  failed: "Failed",
  rejected: "Rejected",
  averageLatency: "Average latency",
  lastSync: "Last sync",
  companyTabs: "Accounts without the tab",
  successOfTotal: (success, total) => (total ? `${success} of ${total} syncs succeeded` : "no syncs yet"),
  failedDetail: "syncs that did not complete",
  rejectedDetail: "deliveries refused (authentication, payload, size)",
  latencyDetail: "per delivery, all time",
  neverSynced: "no delivery yet",
  noValue: "—",
  milliseconds: (value) => `${formatNumber(value)} ms`,
  percent: (value) => `${formatNumber(value)} %`,
  updated: (time) => `Updated ${time} · refreshes every ${REFRESH_MS / 1000} s`,
  loadFailed: (reason) => `Could not refresh the data (${reason}); trying again in ${REFRESH_MS / 1000} s.`,
  unauthorized: "not authorized: open this page with ?token=<secret> or sign in again",
  noDeliveries: "No deliveries in the last 24 hours yet.",
  noErrors: "No errors recorded.",
  errorSource: (time, accountId) => `${time} · account ${accountId}`,
  noRecentDeliveries: "No deliveries yet.",
  averageSeries: "Average latency",
  maxSeries: "Max latency",
  succeededSeries: "Succeeded",
  failedSeries: "Failed",
  latencyAxis: "Latency (ms)",
  volumeAxis: "Deliveries",
  hourAxis: "Hour (local time)",
  latencyPoint: (hour, avg, max, count) => `${hour}: average ${avg} ms, max ${max} ms, ${count} deliveries`,
  volumePoint: (hour, count, failed) => `${hour}: ${count} deliveries, ${failed} failed`,
  latencySummary: (hours, avg, max) =>
    `Hourly sync latency over ${hours} hours with deliveries; mean of hourly averages ${avg} ms, worst ${max} ms.`,
  volumeSummary: (total, failed) => `${total} deliveries in the last 24 hours, ${failed} failed.`,
  provisioning: "Provisioning",
  chatwootAccounts: "Chatwoot account",
  provisioningStates: { ready: "Ready", pending: "Pending", failed: "Failed" },
  chatwootStates: { active: "Active", suspended: "Suspended", deletion_pending: "Deletion pending", deleted: "Deleted" },
  columns: ["Time", "Account", "Company", "Outcome", "New", "Latency", "Error"],
  outcomes: { success: "Success", failed: "Failed" },
  yes: "yes",
  no: "no",
};

const CHART = { minWidth: 480, height: 280, left: 58, right: 14, top: 14, bottom: 46, minLabelSpacing: 56 };

const dataUrl = dataUrlWithToken();
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium", hourCycle: "h23" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", hourCycle: "h23" });
const relativeFormat = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
let latestSeries = null; // kept to redraw the charts at the new width when the window is resized

/** The data URL, carrying the page's own ?token= so that token-authenticated operators can load it. */
function dataUrlWithToken() {
  const url = new URL(document.body.dataset.dataUrl, window.location.href);
  const token = new URLSearchParams(window.location.search).get("token");
  if (token) {
    url.searchParams.set("token", token);
  }
  return url;
}

// ---- DOM helpers -------------------------------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  return withAttributes(document.createElement(tag), attributes, children);
}

function svgElement(tag, attributes = {}, ...children) {
  return withAttributes(document.createElementNS(SVG_NS, tag), attributes, children);
}

function withAttributes(node, attributes, children) {
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function formatNumber(value, digits = 1) {
  return Number(value).toLocaleString("en", { maximumFractionDigits: digits });
}

function formatTime(iso) {
  return iso ? dateTimeFormat.format(new Date(iso)) : TEXT.noValue;
}

function timeAgo(iso) {
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) {
      return relativeFormat.format(Math.round(seconds / size), unit);
    }
  }
  return relativeFormat.format(seconds, "second");
}

// ---- cards -------------------------------------------------------------------------------------------------------

function renderCards(metrics, tabs) {
  const rate = metrics.success_rate;
  const cards = [
    card("success-rate", TEXT.successRate, rate === null ? TEXT.noValue : TEXT.percent(rate),
      TEXT.successOfTotal(metrics.success_count, metrics.total_syncs), rateTone(rate)),
    card("total-syncs", TEXT.totalSyncs, formatNumber(metrics.total_syncs, 0), ""),
    card("failed", TEXT.failed, formatNumber(metrics.failed_count, 0), TEXT.failedDetail,
      metrics.failed_count > 0 ? "bad" : ""),
    card("rejected", TEXT.rejected, formatNumber(metrics.rejected_count, 0), TEXT.rejectedDetail,
      metrics.rejected_count > 0 ? "warn" : ""),
    card("avg-latency", TEXT.averageLatency,
      metrics.avg_latency_ms === null ? TEXT.noValue : TEXT.milliseconds(metrics.avg_latency_ms), TEXT.latencyDetail),
    card("last-sync", TEXT.lastSync, metrics.last_sync ? timeAgo(metrics.last_sync) : TEXT.noValue,
      metrics.last_sync ? formatTime(metrics.last_sync) : TEXT.neverSynced),
    card("company-tabs", TEXT.companyTabs, tabs.missing === null ? TEXT.noValue : formatNumber(tabs.missing, 0),
      tabs.detail, tabs.missing > 0 ? "warn" : ""),
  ];
  byId("cards").replaceChildren(...cards);
}

function card(id, label, value, detail, tone = "") {
  return element("article", { id: `card-${id}`, class: `card ${tone}`.trim() },
    element("h3", { class: "card-label" }, label),
    element("p", { class: "card-value" }, value),
    element("p", { class: "card-detail" }, detail));
}

function rateTone(rate) {
  if (rate === null) {
    return "";
  }
  return rate >= 99 ? "good" : rate >= 90 ? "warn" : "bad";
}

// ---- charts ------------------------------------------------------------------------------------------------------

/** The last 24 hours as hourly slots, each with the series' point for that hour (or null). */
function hourlySlots(series) {
  const points = new Map(series.map((point) => [new Date(point.hour).getTime(), point]));
  const currentHour = Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
  const lastHour = Math.max(currentHour, ...points.keys());
  return Array.from({ length: HOURS_SHOWN + 1 }, (_, index) => {
    const time = lastHour - (HOURS_SHOWN - index) * HOUR_MS;
    return { time, label: timeFormat.format(time), point: points.get(time) || null };
  });
}

/** Round axis ticks from 0 to at least `max` (about four steps). */
function axisTicks(max, wholeNumbers) {
  const rough = Math.max(max, wholeNumbers ? 4 : 1) / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough);
  const roundedStep = wholeNumbers ? Math.max(1, Math.ceil(step)) : step;
  const count = Math.ceil(max / roundedStep) || 1;
  return Array.from({ length: count + 1 }, (_, index) => index * roundedStep);
}

/**
 * An SVG `width` pixels wide (so text keeps its size) with axes, grid and labels for `slots` and a y range given
 * by `ticks`; returns it with its scales.
 */
function chartFrame(slots, ticks, yAxisLabel, summary, width) {
  const plotWidth = width - CHART.left - CHART.right;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const band = plotWidth / slots.length;
  const top = ticks[ticks.length - 1];
  const x = (index) => CHART.left + band * (index + 0.5);
  const y = (value) => CHART.top + plotHeight * (1 - value / top);
  const labelEvery = [1, 2, 3, 4, 6, 12].find((count) => count * band >= CHART.minLabelSpacing) || 12;
  const svg = svgElement("svg", {
    viewBox: `0 0 ${width} ${CHART.height}`, role: "img", "aria-label": summary, class: "chart-svg",
  });
  for (const tick of ticks) {
    svg.append(
      svgElement("line", { class: "grid", x1: CHART.left, x2: width - CHART.right, y1: y(tick), y2: y(tick) }),
      svgElement("text", { class: "tick y-tick", x: CHART.left - 8, y: y(tick) + 4 }, formatNumber(tick, 2)),
    );
  }
  slots.forEach((slot, index) => {
    if ((slots.length - 1 - index) % labelEvery === 0) {
      svg.append(svgElement("text", { class: "tick x-tick", x: x(index), y: CHART.height - CHART.bottom + 18 }, slot.label));
    }
  });
  svg.append(
    svgElement("line", { class: "axis", x1: CHART.left, x2: width - CHART.right, y1: y(0), y2: y(0) }),
    svgElement("text", { class: "axis-label", x: CHART.left + plotWidth / 2, y: CHART.height - 6 }, TEXT.hourAxis),
    svgElement("text", {
      class: "axis-label", x: -(CHART.top + plotHeight / 2), y: 14, transform: "rotate(-90)",
    }, yAxisLabel),
  );
  return { svg, x, y, band };
}

function legend(entries) {
  return element("figcaption", { class: "legend" }, ...entries.map(([className, label]) =>
    element("span", { class: "legend-entry" }, element("span", { class: `swatch ${className}` }), label)));
}

/** Average and max latency per hour: lines through consecutive hours with deliveries, a dot on every hour. */
function latencyChart(slots, width) {
  const points = slots.map((slot) => slot.point).filter(Boolean);
  const worst = Math.max(...points.map((point) => point.max_latency_ms));
  const meanOfAverages = points.reduce((sum, point) => sum + point.avg_latency_ms, 0) / points.length;
  const summary = TEXT.latencySummary(points.length, formatNumber(meanOfAverages), formatNumber(worst));
  const { svg, x, y } = chartFrame(slots, axisTicks(worst, false), TEXT.latencyAxis, summary, width);
  for (const [key, className] of [["max_latency_ms", "series-max"], ["avg_latency_ms", "series-avg"]]) {
    for (const path of linePaths(slots, key, x, y)) {
      svg.append(svgElement("path", { class: `line ${className}`, d: path }));
    }
  }
  slots.forEach((slot, index) => {
    if (!slot.point) {
      return;
    }
    const { avg_latency_ms: avg, max_latency_ms: max, deliveries } = slot.point;
    const tooltip = TEXT.latencyPoint(slot.label, formatNumber(avg), formatNumber(max), deliveries);
    for (const [value, className] of [[max, "series-max"], [avg, "series-avg"]]) {
      svg.append(svgElement("circle", { class: `point ${className}`, cx: x(index), cy: y(value), r: 4 },
        svgElement("title", {}, tooltip)));
    }
  });
  return [svg, legend([["series-avg", TEXT.averageSeries], ["series-max", TEXT.maxSeries]])];
}

/** SVG path data for runs of consecutive hours that have a value; a gap (no deliveries) breaks the line. */
function linePaths(slots, key, x, y) {
  const paths = [];
  let current = "";
  slots.forEach((slot, index) => {
    if (!slot.point) {
      if (current) {
        paths.push(current);
      }
      current = "";
      return;
    }
    current += `${current ? "L" : "M"}${x(index).toFixed(1)},${y(slot.point[key]).toFixed(1)}`;
  });
  return current ? [...paths, current] : paths;
}

/** Deliveries per hour as stacked bars: succeeded below, failed on top. */
function volumeChart(slots, width) {
  const points = slots.map((slot) => slot.point).filter(Boolean);
  const total = points.reduce((sum, point) => sum + point.deliveries, 0);
  const failed = points.reduce((sum, point) => sum + point.failed, 0);
  const busiest = Math.max(...points.map((point) => point.deliveries));
  const summary = TEXT.volumeSummary(total, failed);
  const { svg, x, y, band } = chartFrame(slots, axisTicks(busiest, true), TEXT.volumeAxis, summary, width);
  const barWidth = Math.max(band * 0.7, 2);
  slots.forEach((slot, index) => {
    if (!slot.point) {
      return;
    }
    const { deliveries, failed: failures } = slot.point;
    const tooltip = svgElement("title", {}, TEXT.volumePoint(slot.label, deliveries, failures));
    const left = x(index) - barWidth / 2;
    const succeededTop = y(deliveries - failures);
    svg.append(svgElement("g", { class: "bar" }, tooltip,
      svgElement("rect", { class: "bar-ok", x: left, width: barWidth, y: succeededTop, height: y(0) - succeededTop }),
      svgElement("rect", { class: "bar-failed", x: left, width: barWidth, y: y(deliveries), height: succeededTop - y(deliveries) })));
  });
  return [svg, legend([["bar-ok", TEXT.succeededSeries], ["bar-failed", TEXT.failedSeries]])];
}

function renderCharts(series) {
  const slots = hourlySlots(series);
  const hasData = slots.some((slot) => slot.point);
  const width = Math.max(byId("latency-chart").clientWidth, CHART.minWidth);
  const empty = () => [element("p", { class: "empty" }, TEXT.noDeliveries)];
  byId("latency-chart").replaceChildren(...(hasData ? latencyChart(slots, width) : empty()));
  byId("volume-chart").replaceChildren(...(hasData ? volumeChart(slots, width) : empty()));
}

// ---- lists and tables --------------------------------------------------------------------------------------------

function renderErrors(errors) {
  const content = errors.length === 0
    ? element("p", { class: "empty" }, TEXT.noErrors)
    : element("ul", { class: "errors" }, ...errors.map((error) => element("li", {},
      element("span", { class: "error-meta" }, TEXT.errorSource(formatTime(error.time), error.account_id)),
      element("span", { class: "error-text" }, error.error))));
  byId("recent-errors").replaceChildren(content);
}

function renderCompanies(companies) {
  byId("companies").replaceChildren(
    stateGroup("provisioning", TEXT.provisioning, companies.provisioning, TEXT.provisioningStates),
    stateGroup("chatwoot", TEXT.chatwootAccounts, companies.chatwoot, TEXT.chatwootStates),
  );
}

/** Counts per state, in the order of `labels` (the natural order of the states), then any state we do not know. */
function stateGroup(id, title, counts, labels) {
  const total = Object.values(counts).reduce((sum, count) => sum + count, 0);
  const states = [...new Set([...Object.keys(labels), ...Object.keys(counts)])];
  return element("div", { id: `companies-${id}`, class: "state-group" },
    element("h3", {}, title),
    element("dl", {}, ...states.map((state) => stateRow(state, labels[state] || state, counts[state] || 0, total))));
}

function stateRow(state, label, count, total) {
  return element("div", { class: "state-row", "data-state": state },
    element("dt", {}, label),
    element("dd", {}, element("meter", { min: 0, max: Math.max(total, 1), value: count }), formatNumber(count, 0)));
}

function renderDeliveries(deliveries) {
  if (deliveries.length === 0) {
    byId("deliveries").replaceChildren(element("p", { class: "empty" }, TEXT.noRecentDeliveries));
    return;
  }
  const rows = deliveries.map((delivery) => element("tr", { class: `outcome-${delivery.outcome}` },
    element("td", {}, formatTime(delivery.time)),
    element("td", { class: "code" }, delivery.account_id),
    element("td", { class: "code" }, delivery.company_id || TEXT.noValue),
    element("td", {}, element("span", { class: `badge ${delivery.outcome}` }, TEXT.outcomes[delivery.outcome] || delivery.outcome)),
    element("td", {}, delivery.created ? TEXT.yes : TEXT.no),
    element("td", { class: "number" }, TEXT.milliseconds(delivery.latency_ms)),
    element("td", { class: "error-text" }, delivery.error || "")));
  byId("deliveries").replaceChildren(element("table", {},
    element("thead", {}, element("tr", {}, ...TEXT.columns.map((column) => element("th", { scope: "col" }, column)))),
    element("tbody", {}, ...rows)));
}

// ---- loading -----------------------------------------------------------------------------------------------------

async function loadData() {
  const response = await fetch(dataUrl, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) {
    throw new Error(response.status === 401 ? TEXT.unauthorized : `HTTP ${response.status}`);
  }
  return (await response.json()).data;
}

function render(data) {
  latestSeries = data.latency_series;
  renderCards(data.metrics, data.company_tabs);
  renderCharts(data.latency_series);
  renderErrors(data.metrics.recent_errors);
  renderCompanies(data.companies);
  renderDeliveries(data.recent_deliveries);
  byId("updated").textContent = TEXT.updated(clockFormat.format(new Date()));
}

function showLoadError(message) {
  byId("load-error").textContent = message || "";
  byId("load-error").hidden = !message;
}

async function refresh() {
  try {
    render(await loadData());
    showLoadError(null);
  } catch (error) {
    showLoadError(TEXT.loadFailed(error.message));
  } finally {
    window.setTimeout(refresh, REFRESH_MS);
  }
}

window.addEventListener("resize", () => latestSeries && renderCharts(latestSeries));
for (const node of document.querySelectorAll("[data-text]")) {
  node.textContent = TEXT[node.dataset.text];
}
document.title = TEXT.title;
refresh();
