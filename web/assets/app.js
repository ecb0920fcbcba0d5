// Wavelift's pages: each reads the JSON API (/api) and draws itself; the wave page
// follows the job progress log (server-sent events) and redraws its matrix as tasks move.
// Text from the API is set as text, never parsed as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
const PAGE = document.body.dataset.page;
const ROLE = document.body.dataset.role;
const NAME = document.body.dataset.name;
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: JSON.stringify(body || {}),
  });
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}

// ---- overview

async function overview() {
  const data = await api("/api/waves");
  const rows = data.waves.map((w) =>
    el("tr", { "data-wave": w.name },
      el("td", {}, el("a", { href: `/waves/${encodeURIComponent(w.name)}` }, w.name)),
      el("td", {}, w.phase),
      el("td", {}, `${w.finished} of ${w.tasks}`),
      el("td", { class: `health-${w.health}` }, w.health === "failing" ? `failing (${w.failed} failed or blocked)` : w.health === "waiting" ? `waiting for ${w.awaiting_approval} go(s)` : "ok"),
      el("td", {}, w.next ? `${w.next.label} ${w.next.local}` : "none"),
      el("td", {}, w.engine)));
  show(el("h1", {}, "Waves"),
    el("table", { id: "waves" },
      el("tr", {}, ["Wave", "Phase", "Tasks final", "Health", "Next milestone", "Engine"].map((h) => el("th", {}, h))),
      rows));
}

// ---- wave

const MARKS = { succeeded: "+", running: ">", pending: ".", awaiting_approval: "?", failed: "X", blocked: "b", skipped: "-", cancelled: "c" };
const SHORT = { prereq_check: "prereq", agent_push: "agent", replication_verify: "replication", boot_test: "boot test", cutover: "cutover", cmdb_cleanup: "CMDB" };

function calendar(data) {
  const c = data.calendar;
  const start = c.build_start, end = c.cutover_end;
  const width = 1000, left = 10, span = Math.max(1, end - start);
  const x = (ms) => left + ((Math.min(Math.max(ms, start), end) - start) / span) * (width - 2 * left);
  // A label near the right edge ends at its mark instead of starting there.
  const label = (at, y, text) => svg("text", { x: x(at) + (x(at) > width / 2 ? -4 : 4), y, "text-anchor": x(at) > width / 2 ? "end" : "start" }, text);
  const bands = [
    ["build", c.build_start, c.validate_start, "#d0ebff"],
    ["validate", c.validate_start, c.cutover_start, "#e5dbff"],
    ["cutover week", c.cutover_start, c.cutover_end, "#fff3bf"],
  ];
  const picture = svg("svg", { id: "calendar", width: "100%", height: 84, viewBox: `0 0 ${width} 84`, preserveAspectRatio: "none", role: "img" });
  picture.append(svg("title", {}, `Phases; window ${c.window_local}`));
  for (const [name, from, to, colour] of bands) {
    picture.append(svg("rect", { x: x(from), y: 8, width: Math.max(1, x(to) - x(from)), height: 26, fill: colour }));
    picture.append(svg("text", { x: x(from) + 4, y: 25 }, name));
  }
  picture.append(svg("rect", { x: x(c.window_start), y: 4, width: Math.max(3, x(c.window_end) - x(c.window_start)), height: 34, fill: "#f59f00", "fill-opacity": 0.8 }));
  picture.append(label(c.window_start, 52, `window ${c.window_local}`));
  if (data.now >= start && data.now <= end) {
    picture.append(svg("line", { x1: x(data.now), x2: x(data.now), y1: 0, y2: 68, stroke: "#c92a2a", "stroke-width": 2 }));
    picture.append(label(data.now, 78, `now ${data.now_local}`));
  }
  return picture;
}

function matrix(data) {
  const head = el("tr", {}, el("th", {}, "Server"), el("th", {}, "Application"), data.kinds.map((k) => el("th", {}, SHORT[k] || k)));
  const rows = data.servers.map((s) =>
    el("tr", { "data-server": s.name },
      el("td", {}, el("a", { href: `/servers/${encodeURIComponent(s.name)}` }, s.name), s.removed ? el("span", { class: "muted removed" }, " (removed: its history)") : null),
      el("td", {}, s.application),
      data.kinds.map((k) => {
        const t = s.tasks[k];
        if (!t) return el("td", {}, "");
        const title = [t.id, t.state, t.reason, t.note].filter(Boolean).join(": ");
        return el("td", { class: `cell s-${t.state}`, title, "data-task": t.id, "data-state": t.state }, MARKS[t.state] || "?");
      })));
  return el("table", { id: "matrix" }, head, rows);
}

function replicationTable(data) {
  const rows = data.servers.map((s) => {
    const r = s.replication || {};
    const done = r.total_bytes ? `${bytes(r.replicated_bytes)} of ${bytes(r.total_bytes)} (${Math.floor((100 * r.replicated_bytes) / r.total_bytes)}%)` : "";
    return el("tr", {},
      el("td", {}, s.name),
      el("td", {}, r.state || r.check || ""),
      el("td", {}, done),
      el("td", {}, r.backlog_bytes !== undefined ? bytes(r.backlog_bytes) : ""),
      el("td", {}, seconds(r.lag_seconds)),
      el("td", {}, r.throughput_bytes_per_second != null ? `${bytes(r.throughput_bytes_per_second)}/s` : ""),
      el("td", {}, r.wire_bytes != null ? bytes(r.wire_bytes) : ""),
      el("td", {}, seconds(r.eta_seconds)),
      el("td", {}, r.note || ""));
  });
  return el("table", { id: "replication" },
    el("tr", {}, ["Server", "State", "Replicated", "Backlog", "Lag", "Throughput", "On the wire", "ETA", "Last look"].map((h) => el("th", {}, h))), rows);
}

// Who gives or withholds the go (the API refuses the others; they see the gates only).
const MAY_DECIDE = ROLE === "approver" || ROLE === "admin";

function approvals(data) {
  const gates = data.gates.filter((g) => g.approval_required);
  if (!gates.length) return el("p", { class: "muted" }, "No cutover of this wave needs a go.");
  // A gate that has not opened: a blocked one may be given its go ahead, or have it
  // withdrawn, before a retry upstream opens it.
  const open = (g) => MAY_DECIDE && ["pending", "awaiting_approval", "blocked"].includes(g.state);
  const form = (action, g, label, cls, onsubmit, extra) =>
    el("form", { method: "post", action: `/waves/${encodeURIComponent(NAME)}/${action}`, class: "inline", onsubmit },
      el("input", { type: "hidden", name: "csrf", value: CSRF }),
      el("input", { type: "hidden", name: "app", value: g.application }),
      extra,
      el("button", { type: "submit", class: cls, "data-app": g.application }, label));
  return el("table", { id: "approvals" },
    el("tr", {}, ["Application", "Gate", "Go", "No-go"].map((h) => el("th", {}, h))),
    gates.map((g) => el("tr", { "data-gate": g.application },
      el("td", {}, g.application),
      el("td", { class: `s-${g.state}` }, g.state),
      el("td", {}, g.approved_by ? `given by ${g.approved_by}` : open(g) ? form("approve", g, "Go", "go", decide("approve", g.application)) : "-"),
      el("td", {}, open(g) ? form("no-go", g, "No-go", "no-go", decide("no-go", g.application),
        el("input", { type: "text", name: "reason", placeholder: "why", required: "required", class: "reason", "data-app": g.application })) : "-"))));
}

function reportsTable(data) {
  if (!data.reports.length) return el("p", { class: "muted" }, "No report made yet.");
  return el("table", { id: "reports" },
    el("tr", {}, ["Report", "Subject", "Delivery", "Attempts", "Where or why"].map((h) => el("th", {}, h))),
    data.reports.slice(0, 30).map((r) => el("tr", {},
      el("td", {}, r.kind),
      el("td", {}, r.subject),
      el("td", { class: r.state === "failed" ? "error" : "" }, r.state),
      el("td", {}, r.attempts),
      el("td", {}, r.state === "delivered" ? (r.delivered_via || "") : (r.last_error || "")))));
}

function decide(action, application) {
  return async (event) => {
    event.preventDefault();
    const reason = event.target.querySelector("input[name=reason]")?.value;
    try {
      await post(`/api/waves/${encodeURIComponent(NAME)}/${action}`, { app: application, reason });
      refresh();
    } catch (err) {
      alert(`Not done: ${err.message}`);
    }
  };
}

// ---- levers: retry, skip, cancel, abort (operator and admin)

const MAY_STEER = ROLE === "operator" || ROLE === "admin";
const FINAL = ["succeeded", "failed", "blocked", "skipped", "cancelled"];

// The levers a task in this state takes (the store refuses the others). A running
// cutover is neither skipped nor cancelled halfway: it is aborted, which rolls it back.
// `cutover`: the state of the server's cutover, where the page knows it.
function leversFor(task, cutover) {
  const state = task.state;
  if (task.id.endsWith("/cutover") && state === "running") return ["abort"];
  const out = [];
  if (["failed", "blocked", "cancelled"].includes(state) || reinstalls(task, cutover)) out.push("retry");
  if (state !== "succeeded" && state !== "skipped") out.push("skip");
  if (!FINAL.includes(state)) out.push("cancel");
  return out;
}

// A succeeded agent_push is retried to install its agent again (one that stopped), until
// the server's cutover begins.
function reinstalls(task, cutover) {
  return task.id.endsWith("/agent_push") && task.state === "succeeded" && cutover !== undefined &&
    !["running", "succeeded", "skipped"].includes(cutover);
}

function taskPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

// A form per lever (it works without the script); the script posts to the API instead
// and redraws the page.
function leverForms(task, back, redraw, cutover) {
  if (!MAY_STEER) return null;
  return el("span", { class: "levers" }, leversFor(task, cutover).map((lever) =>
    el("form", { method: "post", action: `/tasks/${taskPath(task.id)}/${lever}`, class: "inline",
      onsubmit: async (event) => {
        event.preventDefault();
        const reason = event.target.querySelector("input[name=reason]")?.value;
        const asked = reinstalls(task, cutover) ? `install the agent of ${task.id.split("/")[0]} again?` : `${lever} ${task.id}?`;
        if ((lever !== "retry" || reinstalls(task, cutover)) && !confirm(asked)) return;
        try {
          await post(`/api/tasks/${taskPath(task.id)}/${lever}`, reason === undefined ? {} : { reason });
          redraw();
        } catch (err) {
          alert(`Not done: ${err.message}`);
        }
      } },
      el("input", { type: "hidden", name: "csrf", value: CSRF }),
      el("input", { type: "hidden", name: "back", value: back }),
      // An abort says why: recorded with who, and in the cutover's failure.
      lever === "abort" ? el("input", { type: "text", name: "reason", placeholder: "why", required: "required", class: "abort-reason", "data-task": task.id }) : null,
      el("button", { type: "submit", class: `lever ${lever}`, "data-task": task.id, "data-lever": lever }, lever))));
}

// The wave's failed and blocked tasks, and its cutovers under way (which an operator
// may abort from here during the window), each with its reason and levers.
function needsAttention(t) {
  return t.state === "failed" || t.state === "blocked" || (t.state === "running" && t.id.endsWith("/cutover"));
}

function attention(data) {
  const stuck = data.servers.filter((s) => !s.removed).flatMap((s) => data.kinds.map((k) => s.tasks[k]).filter((t) => t && needsAttention(t))
    .map((t) => ({ ...t, server: s.name })));
  // A blocked gate (its reason is a failure upstream, maybe in another wave) has no
  // lever of its own: retrying what failed releases it.
  const gates = data.gates.filter((g) => needsAttention(g));
  if (!stuck.length && !gates.length) return el("p", { class: "muted", id: "attention" }, "Nothing failed, blocked or cutting over.");
  return el("table", { id: "attention" },
    el("tr", {}, ["Task", "State", "Why", ""].map((h) => el("th", {}, h))),
    stuck.map((t) => el("tr", { "data-task": t.id },
      el("td", {}, el("a", { href: `/servers/${encodeURIComponent(t.server)}` }, t.id)),
      el("td", { class: `s-${t.state}` }, t.state),
      el("td", {}, t.reason || ""),
      el("td", {}, leverForms(t, `/waves/${encodeURIComponent(NAME)}`, refresh)))),
    gates.map((g) => el("tr", { "data-task": g.id },
      el("td", {}, g.id),
      el("td", { class: `s-${g.state}` }, g.state),
      el("td", {}, g.reason || ""),
      el("td", {}, ""))));
}

let waveData = null;
let refreshing = null;
let again = false;
let trailing = null;

function drawWave() {
  // A reason being typed (a no-go's, an abort's) survives the redraw (the page redraws
  // as the log moves).
  const fields = [["input.reason", "app"], ["input.abort-reason", "task"]];
  const typed = fields.flatMap(([css, key]) => [...document.querySelectorAll(css)]
    .map((i) => [`${css}[data-${key}="${CSS.escape(i.dataset[key])}"]`, i.value, i === document.activeElement]));
  drawWaveAnew();
  for (const [css, value, focused] of typed) {
    const input = document.querySelector(css);
    if (!input) continue;
    input.value = value;
    if (focused) input.focus();
  }
}

function drawWaveAnew() {
  const d = waveData;
  const s = d.summary;
  const existingLog = document.getElementById("log");
  const log = existingLog || el("div", { id: "log" });
  show(
    el("h1", {}, `${s.name}: ${s.phase}`),
    el("p", {}, `${s.finished} of ${s.tasks} tasks final; `, el("span", { class: `health-${s.health}`, id: "health" }, s.health),
      s.next ? `; next: ${s.next.label} ${s.next.local} (${s.timezone})` : ""),
    calendar(d),
    el("h2", {}, "Servers and tasks"), matrix(d),
    el("h2", {}, "Failed, blocked and cutting over"), attention(d),
    el("h2", {}, "Replication"), replicationTable(d),
    el("h2", {}, "Approvals"), approvals(d),
    el("h2", {}, "Reports"), reportsTable(d),
    el("h2", {}, "Job progress log"), log);
}

// A refresh asked for while one runs is made after it: the last ask always gets data
// fetched after it.
function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = setTimeout(async () => {
    try {
      waveData = await api(`/api/waves/${encodeURIComponent(NAME)}`);
      drawWave();
    } finally {
      refreshing = null;
      if (again) {
        again = false;
        refresh();
      }
    }
  }, 250);
}

async function wave() {
  waveData = await api(`/api/waves/${encodeURIComponent(NAME)}`);
  drawWave();
  const source = new EventSource(`/api/waves/${encodeURIComponent(NAME)}/events/stream`);
  source.addEventListener("log", (message) => {
    const e = JSON.parse(message.data);
    const log = document.getElementById("log");
    if (log) {
      log.prepend(el("div", { "data-event": e.id }, `${new Date(e.at).toISOString().slice(0, 16).replace("T", " ")}  ${e.server || "-"}  ${e.kind}  ${e.message}`));
      while (log.childElementCount > 500) log.lastElementChild.remove();
    }
    refresh();
    // The API's data may be up to 3 s old (the server's cache): look once more when the
    // log has been quiet longer than that, so the page ends on what the store holds.
    clearTimeout(trailing);
    trailing = setTimeout(refresh, 3500);
  });
}

// ---- server

async function server() {
  const d = await api(`/api/servers/${encodeURIComponent(NAME)}`);
  const cutover = d.tasks.find((t) => t.kind === "cutover")?.state;
  const tasks = d.tasks.map((t) => el("section", { "data-task": t.id },
    el("h2", {}, `${t.kind}: `, el("span", { class: `s-${t.state} state` }, t.state), t.reason ? ` (${t.reason})` : "", " ",
      // A removed server's tasks run no more: no levers (the store refuses them).
      d.removed ? null : leverForms(t, `/servers/${encodeURIComponent(NAME)}`, server, cutover)),
    t.note ? el("p", { class: "muted" }, t.note) : null,
    t.attempts.length ? el("table", {},
      el("tr", {}, ["Attempt", "Started", "Finished", "Outcome", "Checks", "Output", "Error"].map((h) => el("th", {}, h))),
      t.attempts.map((a) => el("tr", {},
        el("td", {}, a.number),
        el("td", {}, new Date(a.started_at).toISOString()),
        el("td", {}, new Date(a.finished_at).toISOString()),
        el("td", { class: `s-${a.outcome}` }, a.outcome),
        el("td", {}, (a.checks || []).map((c) => el("div", { class: c.passed ? "" : "error" }, `${c.passed ? "pass" : "FAIL"} ${c.name}: ${c.detail}${!c.passed && c.found !== undefined ? ` [found: ${c.found}; expected: ${c.expected}]` : ""}${c.remediation ? ` (${c.remediation})` : ""}`))),
        el("td", {}, a.output),
        el("td", { class: "error" }, a.error || "")))) : el("p", { class: "muted" }, "no attempt yet")));
  show(el("h1", {}, `${d.name}`), el("p", {}, "Wave ", el("a", { href: `/waves/${encodeURIComponent(d.wave)}` }, d.wave), `, application ${d.application}`,
    d.removed ? el("span", { class: "muted", id: "removed" }, " (removed by an apply: its history; its tasks run no more)") : null), ...tasks,
    el("h2", {}, "Job progress log"),
    el("div", { id: "log" }, d.events.slice().reverse().map((e) => el("div", {}, `${new Date(e.at).toISOString().slice(0, 16).replace("T", " ")}  ${e.kind}  ${e.message}`))));
}

const pages = { overview, wave, server };
(pages[PAGE] || overview)().catch((err) => show(el("p", { class: "error" }, `Cannot load: ${err.message}`)));
