// The Sluice web console: a page over the control API's JSON routes. It holds no data of
// its own; every request carries the token typed at login (kept in this tab's
// sessionStorage), so the API decides what the holder may read and change. Text from the
// API is always set as text, never parsed as HTML.
"use strict";

const TOKEN_KEY = "sluice.console.token";
const REFRESH_MS = 3000;
const HISTORY_REFRESH_MS = 15000; // the history also changes with serves landing, not only with new tables
const COLOURS = ["#2f6fde", "#e8702a", "#2a9d5c", "#c23b8a", "#7a5af5", "#9a7b16", "#1b9aaa", "#5c6370"];

let who = null; // the token's {token_id, name, scope, may_change}, from /v1/whoami
let refreshTimer = null;
let shown = 0; // which view is on the page: a view that was left stops refreshing

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// -- the API ---------------------------------------------------------------------------
async function api(method, path, { body, ifMatch } = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (ifMatch !== undefined) headers["if-match"] = `"${ifMatch}"`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, `the API did not answer (${exc.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (exc) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, `${method} ${path}: ${response.status}: ${message}`);
  }
  return data;
}

const experimentPath = (id) => `/v1/experiments/${encodeURIComponent(id)}`;

// -- the page --------------------------------------------------------------------------
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showMessage(text, kind = "error") {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind === "error" ? "" : "info";
  box.hidden = !text;
}

function showError(exc) {
  showMessage(exc instanceof ApiError ? exc.message : `the console failed: ${exc.message}`);
  if (exc instanceof ApiError && exc.status === 401) logOut(exc.message);
}

const number = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const percent = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
const moment = (ms) => (ms === null || ms === undefined ? "–" : `${new Date(ms).toISOString().slice(0, 19).replace("T", " ")} UTC`);

function table(id, head, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, head.map(([label, cls]) => el("th", { class: cls }, label)))),
    el("tbody", {}, rows));
}

// -- plots (inline SVG) ----------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// Horizontal bars, one per arm: `items` [{label, value}], values in [0, max].
function barPlot(id, title, items, max, format) {
  const row = 22, left = 90, width = 360, right = 60;
  const height = items.length * row + 24;
  const plot = svg("svg", { id, viewBox: `0 0 ${left + width + right} ${height}`,
                            role: "img", "aria-label": title });
  items.forEach((item, i) => {
    const y = 20 + i * row;
    const w = max > 0 && item.value !== null ? Math.max(0, Math.min(1, item.value / max)) * width : 0;
    plot.append(svg("text", { x: left - 6, y: y + 12, "text-anchor": "end" }, item.label),
                svg("rect", { x: left, y, width: w, height: 14, fill: COLOURS[i % COLOURS.length] }),
                svg("text", { x: left + w + 4, y: y + 12 }, format(item.value)));
  });
  plot.prepend(svg("text", { x: 0, y: 12 }, title));
  return plot;
}

// Each arm's mean with its interval on a common axis.
function intervalPlot(id, title, arms) {
  const row = 22, left = 90, width = 360, right = 20;
  const height = arms.length * row + 40;
  const lo = Math.min(...arms.map((a) => a.lower)), hi = Math.max(...arms.map((a) => a.upper));
  const span = hi > lo ? hi - lo : 1;
  const x = (v) => left + ((v - lo) / span) * width;
  const plot = svg("svg", { id, viewBox: `0 0 ${left + width + right} ${height}`,
                            role: "img", "aria-label": title }, svg("text", { x: 0, y: 12 }, title));
  arms.forEach((a, i) => {
    const y = 28 + i * row, colour = COLOURS[i % COLOURS.length];
    plot.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, a.arm),
                svg("line", { x1: x(a.lower), x2: x(a.upper), y1: y, y2: y, stroke: colour, "stroke-width": 2 }),
                svg("circle", { cx: x(a.mean), cy: y, r: 4, fill: colour }));
  });
  const axis = 28 + arms.length * row - 8;
  plot.append(svg("line", { class: "axis", x1: left, x2: left + width, y1: axis, y2: axis }),
              svg("text", { x: left, y: axis + 12 }, number(lo, 4)),
              svg("text", { x: left + width, y: axis + 12, "text-anchor": "end" }, number(hi, 4)));
  return plot;
}

// Lines over time: `series` [{label, points: [[epoch ms, y], ...]}], y from 0 to `yMax`.
function linePlot(id, title, series, yMax, format) {
  const left = 50, width = 380, right = 70, top = 22, plotHeight = 140;
  const times = series.flatMap((s) => s.points.map(([t]) => t));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = (t) => left + (t1 > t0 ? ((t - t0) / (t1 - t0)) * width : width / 2);
  const y = (v) => top + plotHeight - (yMax > 0 ? Math.min(1, Math.max(0, v / yMax)) : 0) * plotHeight;
  const plot = svg("svg", { id, viewBox: `0 0 ${left + width + right} ${top + plotHeight + 30}`, role: "img",
                            "aria-label": title },
    svg("text", { x: 0, y: 12 }, title),
    svg("line", { class: "axis", x1: left, x2: left + width, y1: y(0), y2: y(0) }),
    svg("line", { class: "axis", x1: left, x2: left, y1: y(0), y2: y(yMax) }),
    svg("text", { x: left - 4, y: y(yMax) + 4, "text-anchor": "end" }, format(yMax)),
    svg("text", { x: left - 4, y: y(0) + 4, "text-anchor": "end" }, format(0)),
    svg("text", { x: left, y: y(0) + 16 }, moment(t0)),
    svg("text", { x: left + width, y: y(0) + 16, "text-anchor": "end" }, moment(t1)));
  series.forEach((s, i) => {
    const colour = s.colour || COLOURS[i % COLOURS.length];
    const points = s.points.map(([t, v]) => `${x(t)},${y(v)}`).join(" ");
    plot.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 1.5,
                                  "stroke-dasharray": s.dashed ? "4 3" : "none" }));
    if (s.points.length <= 40) {
      for (const [t, v] of s.points) plot.append(svg("circle", { cx: x(t), cy: y(v), r: 2.5, fill: colour }));
    }
    const last = s.points[s.points.length - 1];
    if (last) plot.append(svg("text", { x: x(last[0]) + 5, y: y(last[1]) + 4, fill: colour }, s.label));
  });
  return plot;
}

function historyPlots(past) {
  const plots = [];
  const withPBest = past.tables.filter((t) => t.p_best !== null);
  if (withPBest.length) {
    plots.push(linePlot("p-best-history", "P(best) over time (each table's window)",
      past.arms.map((arm) => ({ label: arm, points: withPBest.map((t) => [t.computed_at_ms, t.p_best[arm] ?? 0]) })),
      1, (v) => v.toFixed(1)));
  } else {
    plots.push(el("p", { class: "muted" }, "P(best) over time is computed for a binary reward."));
  }
  plots.push(linePlot("weights-history", "weights over time",
    past.arms.map((arm) => ({ label: arm, points: past.tables.map((t) => [t.computed_at_ms, t.weights[arm] ?? 0]) })),
    1, (v) => v.toFixed(1)));
  const regret = past.regret;
  if (regret.hours_ms.length) {
    const top = Math.max(...regret.experiment, ...regret.equal_split, 0) || 1; // a scale also while nothing was lost
    plots.push(linePlot("regret-history", "estimated cumulative regret vs each day's best arm", [
      { label: "served", points: regret.hours_ms.map((t, i) => [t, regret.experiment[i]]), colour: COLOURS[0] },
      { label: "equal split", points: regret.hours_ms.map((t, i) => [t, regret.equal_split[i]]), colour: COLOURS[7],
        dashed: true }], top, (v) => v.toPrecision(2)));
  } else {
    plots.push(el("p", { id: "regret-history-note", class: "muted" },
                  "Regret over time: no attributed serves of this entity in ClickHouse yet."));
  }
  return el("div", { class: "plots" }, plots);
}

// -- views -----------------------------------------------------------------------------
function render(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes);
}

function loginView(reason) {
  const field = el("input", { id: "token", type: "password", autocomplete: "off", required: true,
                              placeholder: "sluice_…", "aria-label": "token" });
  const form = el("form", { id: "login-form", class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, field.value.trim());
    try {
      await loadWho();
      showMessage("");
      route(); // where the address points: the list, or an experiment linked to
    } catch (exc) {
      sessionStorage.removeItem(TOKEN_KEY);
      showMessage(exc.message);
    }
  } }, el("label", { for: "token" }, "Token"), field, el("button", { id: "login", class: "primary", type: "submit" }, "Log in"));
  render(el("section", {}, el("h1", {}, "Log in"),
    el("p", { class: "muted" }, "A control-API token (`sluice tokens create --scope read|write`). It stays in this tab only."),
    form));
  if (reason) showMessage(reason);
  field.focus();
}

async function loadWho() {
  who = await api("GET", "/v1/whoami");
  document.getElementById("who").textContent = `${who.name} (${who.token_id}, scope ${who.scope})`;
  document.getElementById("logout").hidden = false;
}

function logOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  who = null;
  document.getElementById("who").textContent = "";
  document.getElementById("logout").hidden = true;
  stopRefresh();
  loginView(reason);
}

async function listView() {
  const view = shown;
  const { experiments } = await api("GET", "/v1/experiments");
  if (view !== shown) return;
  const rows = experiments.map((e) => el("tr", { "data-experiment": e.id },
    el("td", {}, el("a", { href: `#/experiments/${encodeURIComponent(e.id)}` }, e.id)),
    el("td", {}, el("span", { class: `status status-${e.status}` }, e.status)),
    el("td", {}, e.policy.name),
    el("td", {}, e.arms.map((a) => a.name).join(", ")),
    el("td", { class: "num" }, e.spec_version),
    el("td", { class: "muted" }, e.description)));
  render(el("section", {}, el("h1", {}, "Experiments"),
    experiments.length ? table("experiments", [["id"], ["status"], ["policy"], ["arms"], ["version", "num"], ["description"]], rows)
                       : el("p", { class: "muted" }, "No experiments yet: `sluice experiments apply SPEC.yaml`.")));
}

// The experiment page: the spec's state and actions, then one entity's results, refreshed.
async function experimentView(id, entity) {
  const view = shown;
  let spec = await api("GET", experimentPath(id));
  if (view !== shown) return;
  const entityField = spec.entity === null ? null
    : el("input", { id: "entity", value: entity || (spec.entities || [""])[0], list: "entities", placeholder: spec.entity, "aria-label": "entity" });
  const status = el("span", { id: "status" });
  const version = el("span", { class: "muted" });
  const live = el("div", { id: "live" }, el("p", { class: "muted" }, "Loading…"));
  const asOfResult = el("div", { id: "as-of-result" });
  let timeline = { version: null, entity: null, at: 0, node: el("p", { class: "muted" }, "–") };

  const canChange = () => Boolean(who && who.may_change);
  const actionButton = (action, label) => el("button", { id: action, type: "button", onclick: () => change(action) }, label);
  const buttons = { pause: actionButton("pause", "Pause"), resume: actionButton("resume", "Resume"),
                    stop: actionButton("stop", "Stop") };

  function showSpec() {
    status.textContent = spec.status;
    status.className = `status status-${spec.status}`;
    version.textContent = `version ${spec.spec_version} · ${spec.policy.name} · default arm ${spec.default_arm}`;
    buttons.pause.disabled = !canChange() || spec.status !== "running";
    buttons.resume.disabled = !canChange() || spec.status !== "paused";
    buttons.stop.disabled = !canChange() || spec.status === "stopped";
    for (const b of Object.values(buttons)) b.title = canChange() ? "" : `token scope ${who ? who.scope : "?"}: changes need write`;
  }

  async function change(action, arm) {
    const path = arm === undefined ? `${experimentPath(id)}/${action}` : `${experimentPath(id)}/arms/${encodeURIComponent(arm)}/${action}`;
    const body = arm !== undefined && currentEntity() ? { entity: currentEntity() } : undefined;
    try {
      spec = await api("POST", path, { body, ifMatch: spec.spec_version });
      showMessage(`${arm === undefined ? id : `arm ${arm}`}: ${action} done (version ${spec.spec_version})`, "info");
      showSpec();
      await refresh();
    } catch (exc) {
      showError(exc);
    }
  }

  const currentEntity = () => (entityField === null ? "" : entityField.value.trim());
  // As the worker reads the spec (HealthConfig.is_retired): retired by hand for this entity
  // (or all) more recently than reinstated.
  function retired(arm) {
    const latest = (changes) => Math.max(0, ...changes
      .filter((c) => c.arm === arm && (c.entity === null || c.entity === currentEntity())).map((c) => c.at_ms));
    return latest(spec.health.retired) > latest(spec.health.reinstated);
  }
  const offered = (arm) => arm.entities === null || !currentEntity() || arm.entities.includes(currentEntity());

  // The arms offered to the entity with a weight table's numbers; `live`: the table in force,
  // with the arms' retirement and their actions (not for a past moment's table).
  function weightsTable(tableId, weights, { live = false } = {}) {
    const byArm = new Map((weights ? weights.arms : []).map((a) => [a.arm, a]));
    const rows = spec.arms.filter(offered).map((arm) => {
      const w = byArm.get(arm.name);
      const bar = el("span", { class: "bar" });
      bar.style.width = `${w ? Math.round(w.weight * 120) : 0}px`;
      const cells = [
        el("td", {}, arm.name, arm.name === spec.default_arm ? el("span", { class: "muted" }, " (default)") : null,
           live && retired(arm.name) ? el("span", { class: "retired" }, " retired") : null),
        el("td", { class: "num weight" }, bar, w ? number(w.weight) : "–"),
        el("td", { class: "num" }, w ? w.serves : "–"),
        el("td", { class: "num" }, w ? w.count : "–"),
        el("td", { class: "num" }, w ? number(w.mean, 4) : "–"),
      ];
      if (live) {
        const forWhom = currentEntity() ? `for ${currentEntity()}` : "for every entity";
        cells.push(el("td", {},
          el("button", { type: "button", class: "retire", disabled: !canChange() || arm.name === spec.default_arm || retired(arm.name),
                         title: `hold ${arm.name} at 0 ${forWhom}`, onclick: () => change("retire", arm.name) }, "Retire"),
          " ",
          el("button", { type: "button", class: "reinstate", disabled: !canChange(),
                         title: `give ${arm.name} its traffic back ${forWhom}`, onclick: () => change("reinstate", arm.name) },
             "Reinstate")));
      }
      return el("tr", { "data-arm": arm.name }, cells);
    });
    const head = [["arm"], ["weight", "num"], ["serves", "num"], ["observations", "num"], ["mean", "num"]];
    if (live) head.push(["actions"]);
    return table(tableId, head, rows);
  }

  function statisticsBlock(statistics) {
    if (!statistics.arms.length) return el("p", { id: "statistics-note", class: "muted" }, statistics.note);
    const rows = statistics.arms.map((a) => el("tr", { "data-arm": a.arm },
      el("td", {}, a.arm, a.arm === statistics.control ? el("span", { class: "muted" }, " (control)") : null),
      el("td", { class: "num" }, a.n), el("td", { class: "num" }, number(a.mean, 4)),
      el("td", { class: "num" }, `[${number(a.lower, 4)}, ${number(a.upper, 4)}]`),
      el("td", { class: "num" }, percent(a.p_best)), el("td", { class: "num" }, percent(a.p_beat_control)),
      el("td", { class: "num" }, number(a.expected_loss, 5))));
    return el("div", {},
      table("statistics", [["arm"], ["n", "num"], ["mean", "num"], [`${100 * statistics.confidence} % interval`, "num"],
                           ["P(best)", "num"], ["P(beats control)", "num"], ["expected loss", "num"]], rows),
      el("div", { class: "plots" },
        intervalPlot("interval-plot", `mean and ${100 * statistics.confidence} % interval`, statistics.arms),
        barPlot("p-best-plot", "P(best)", statistics.arms.map((a) => ({ label: a.arm, value: a.p_best })), 1, percent),
        barPlot("regret-plot", "expected loss (regret) of choosing the arm",
                statistics.arms.map((a) => ({ label: a.arm, value: a.expected_loss })),
                Math.max(1e-12, ...statistics.arms.map((a) => a.expected_loss || 0)), (v) => number(v, 5))));
  }

  function decisionBlock(decision, alerts) {
    const verdict = decision === null ? el("p", { id: "decision", class: "muted" }, "No decision yet.")
      : el("p", { id: "decision" }, el("strong", {}, decision.verdict),
           decision.winner ? ` → ${decision.winner}` : "", ` · rule ${decision.rule} · ${decision.reason} · ${moment(decision.timestamp_ms)}`);
    const alertRows = alerts.map((a) => el("tr", {},
      el("td", {}, moment(a.timestamp_ms)), el("td", { class: `severity-${a.severity}` }, a.severity), el("td", {}, a.kind),
      el("td", {}, a.arm ?? "–"), el("td", {}, a.message)));
    return el("div", {}, verdict,
      alerts.length ? table("alerts", [["when"], ["severity"], ["kind"], ["arm"], ["message"]], alertRows)
                    : el("p", { id: "alerts", class: "muted" }, "No alerts."));
  }

  async function refresh() {
    if (view !== shown) return;
    const path = `${experimentPath(id)}/results?entity=${encodeURIComponent(currentEntity())}`;
    let results = null, note = null;
    try {
      spec = await api("GET", experimentPath(id));
      showSpec();
      results = await api("GET", path);
    } catch (exc) {
      if (!(exc instanceof ApiError) || ![404, 503].includes(exc.status)) {
        showError(exc);
        return;
      }
      note = exc.message; // no table yet, or results are off: the arms are still shown
    }
    const w = results ? results.weights : null;
    if (w && (w.version !== timeline.version || currentEntity() !== timeline.entity
              || Date.now() - timeline.at > HISTORY_REFRESH_MS)) {
      try {
        const found = await api("GET", `${experimentPath(id)}/history?entity=${encodeURIComponent(currentEntity())}`);
        timeline = { version: w.version, entity: currentEntity(), at: Date.now(), node: historyPlots(found) };
      } catch (exc) {
        timeline = { version: null, entity: null, at: 0, node: el("p", { class: "muted" }, exc.message) };
      }
    }
    live.replaceChildren(
      el("section", {}, el("h2", {}, "Weights in force"),
        el("p", { class: "muted", id: "weights-caption" }, w
          ? `version ${w.version} · ${w.policy} · computed ${moment(w.computed_at_ms)} · window ${moment(w.window_start_ms)} – ${moment(w.window_end_ms)} · ${w.reason}`
          : note),
        weightsTable("weights", w, { live: true })),
      el("section", {}, el("h2", {}, "Statistics"), results ? statisticsBlock(results.statistics) : el("p", { class: "muted" }, "–")),
      el("section", {}, el("h2", {}, "Over time"), w ? timeline.node : el("p", { class: "muted" }, "–")),
      el("section", {}, el("h2", {}, "Decision and alerts"),
        results ? decisionBlock(results.decision, results.alerts) : el("p", { class: "muted" }, "–")));
  }

  async function asOf(event) {
    event.preventDefault();
    const at = document.getElementById("as-of-at").value;
    try {
      const path = `${experimentPath(id)}/as-of?entity=${encodeURIComponent(currentEntity())}&at=${encodeURIComponent(at.length === 16 ? `${at}:00Z` : `${at}Z`)}`;
      const answer = await api("GET", path);
      asOfResult.replaceChildren(el("p", { class: "muted" },
        `version ${answer.weights.version}, computed ${moment(answer.weights.computed_at_ms)}, in force at ${moment(answer.at_ms)}`),
        weightsTable("as-of-weights", answer.weights));
    } catch (exc) {
      asOfResult.replaceChildren(el("p", { class: "muted" }, exc.message));
    }
  }

  const entityForm = entityField === null ? null : el("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    history.replaceState(null, "", `#/experiments/${encodeURIComponent(id)}?entity=${encodeURIComponent(currentEntity())}`);
    refresh();
  } }, el("label", { for: "entity" }, `Entity (${spec.entity})`), entityField,
    el("datalist", { id: "entities" }, (spec.entities || []).map((e) => el("option", { value: e }))),
    el("button", { id: "show-entity", type: "submit" }, "Show"));

  const now = new Date().toISOString().slice(0, 16);
  render(
    el("h1", {}, id, " ", status, " ", version),
    el("div", { class: "actions" }, buttons.pause, buttons.resume, buttons.stop,
       spec.description ? el("span", { class: "muted" }, spec.description) : null),
    entityForm ? el("section", {}, entityForm) : null,
    live,
    el("section", {}, el("h2", {}, "Weights as of a moment"),
      el("form", { id: "as-of-form", class: "inline", onsubmit: asOf },
        el("label", { for: "as-of-at" }, "At (UTC)"),
        el("input", { id: "as-of-at", type: "datetime-local", value: now, required: true }),
        el("button", { id: "as-of-show", type: "submit" }, "Show")),
      asOfResult));
  showSpec();
  await refresh();
  if (view === shown) refreshTimer = setInterval(refresh, REFRESH_MS);
}

// -- routing: #/ the list, #/experiments/ID?entity=E an experiment ---------------------
function stopRefresh() {
  if (refreshTimer !== null) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  shown += 1;
  stopRefresh();
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    loginView();
    return;
  }
  try {
    if (who === null) await loadWho();
    const [path, query] = location.hash.replace(/^#/, "").split("?");
    const found = path.match(/^\/experiments\/([^/]+)$/);
    if (found) {
      const entity = new URLSearchParams(query || "").get("entity") || "";
      await experimentView(decodeURIComponent(found[1]), entity);
    } else {
      await listView();
    }
  } catch (exc) {
    showError(exc);
  }
}

window.addEventListener("hashchange", () => {
  showMessage("");
  route();
});
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", () => logOut());
  route();
});
