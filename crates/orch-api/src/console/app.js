// orchestratord's console: polls GET /v1/console once a second and renders it;
// actions go through the existing API (drain, reload, replicas, cancel), each after
// a confirmation. The key, when the server needs one, lives in this tab's
// sessionStorage only. No library, no build step.
"use strict";

const KEY = "orchestratord-key";
const $ = (id) => document.getElementById(id);
let snapshot = null;
let pending = null;

function key() { return sessionStorage.getItem(KEY); }

async function api(method, path, body) {
  const headers = {};
  const k = key();
  if (k) headers["Authorization"] = "Bearer " + k;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  return { status: r.status, data };
}

// A row's cells are made once and then only their text changes, so focus, a click
// in progress and the layout survive each refresh.
function cell(tr, text, cls) {
  const i = tr.dataset.fill === undefined ? 0 : Number(tr.dataset.fill);
  let td = tr.children[i];
  if (!td) {
    td = document.createElement("td");
    tr.appendChild(td);
  }
  const t = text === undefined || text === null ? "–" : String(text);
  if (td.textContent !== t) td.textContent = t;
  if (cls !== undefined && td.className !== cls) td.className = cls;
  tr.dataset.fill = String(i + 1);
  return td;
}

// Keep one row per key, in `rows`' order: existing rows are updated in place, new
// ones made, gone ones removed; a row moves only when the order changed.
function fill(tbody, rows, keyOf, update) {
  const have = new Map();
  for (const tr of tbody.rows) have.set(tr.dataset.key, tr);
  let at = tbody.firstElementChild;
  for (const row of rows) {
    const k = keyOf(row);
    let tr = have.get(k);
    if (tr) have.delete(k);
    else {
      tr = document.createElement("tr");
      tr.dataset.key = k;
    }
    tr.dataset.fill = "0";
    update(tr, row);
    if (tr === at) at = at.nextElementSibling;
    else tbody.insertBefore(tr, at);
  }
  for (const tr of have.values()) tr.remove();
}

// Replace a select's options only when the list changed (an open drop-down keeps).
function options(sel, items) {
  const sig = items.map((i) => i[1]).join("\n");
  if (sel.dataset.sig === sig) return;
  const keep = sel.value;
  sel.replaceChildren(...items.map(([label, value]) => new Option(label, value)));
  sel.dataset.sig = sig;
  if (items.some((i) => i[1] === keep)) sel.value = keep;
}

function renderPools(pools) {
  fill($("pools").tBodies[0], pools, (p) => p.id, (tr, p) => {
    tr.dataset.pool = p.id;
    cell(tr, p.id);
    cell(tr, p.model);
    cell(tr, p.engine + " " + p.engine_version);
    const state = p.draining ? "draining" : p.ready ? "ready" : "unready";
    cell(tr, state, p.ready && !p.draining ? "state-ready" : "state-bad").dataset.k = "state";
    cell(tr, (p.slots_total - p.slots_free) + " / " + p.slots_total, "n").dataset.k = "slots";
    cell(tr, p.queue_depth + " / " + p.queue_capacity, "n").dataset.k = "queue";
    cell(tr, p.replicas.map((r) => r.id + " (" + r.state + ", " + (r.slots_total - r.slots_free) + "/" + r.slots_total + ")").join(", ")).dataset.k = "replicas";
  });
  for (const sel of document.querySelectorAll(".pool-select")) options(sel, pools.map((p) => [p.id, p.id]));
  options($("remove-replica"), pools.flatMap((p) => p.replicas.map((r) => [p.id + " / " + r.id, p.id + "\u0000" + r.id])));
}

function pct(x) { return (100 * x).toFixed(0) + "%"; }

function renderTenants(tenants) {
  fill($("tenants").tBodies[0], tenants, (t) => t.tenant, (tr, t) => {
    tr.dataset.tenant = t.tenant;
    cell(tr, t.tenant);
    cell(tr, t.weight, "n");
    cell(tr, pct(t.share_interactive) + " / " + pct(t.share_batch), "n");
    cell(tr, t.in_flight, "n").dataset.k = "in-flight";
    cell(tr, t.queued, "n").dataset.k = "queued";
    const q = Object.entries(t.quotas).map(([k, v]) => k + " " + v).join(", ");
    cell(tr, q || "none");
  });
}

function renderTasks(tasks, total) {
  $("task-count").textContent = "(" + total + (total > tasks.length ? ", oldest " + tasks.length + " shown" : "") + ")";
  fill($("tasks").tBodies[0], tasks, (t) => t.task_id, (tr, t) => {
    tr.dataset.task = t.task_id;
    cell(tr, t.task_id.slice(0, 8)).title = t.task_id;
    cell(tr, t.tenant);
    cell(tr, t.pool_id);
    cell(tr, t.replica_id);
    cell(tr, t.state).dataset.k = "state";
    cell(tr, t.queue_position, "n");
    cell(tr, t.predicted_start_ms, "n");
    cell(tr, t.tokens_out, "n").dataset.k = "tokens";
    cell(tr, t.tokens_per_s.toFixed(1), "n");
    cell(tr, (t.age_ms / 1000).toFixed(1), "n");
    if (!tr.querySelector("button")) {
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Cancel…";
      b.setAttribute("aria-label", "Cancel task " + t.task_id);
      b.dataset.cancel = t.task_id;
      td.appendChild(b);
      tr.appendChild(td);
    }
  });
}

function renderFailures(failures) {
  fill($("failures").tBodies[0], failures, (f) => f.task_id, (tr, f) => {
    cell(tr, new Date(f.at_ms).toLocaleTimeString());
    cell(tr, f.task_id.slice(0, 8)).title = f.task_id;
    cell(tr, f.tenant);
    cell(tr, f.pool_id);
    cell(tr, f.code);
  });
}

// A line over the values; a missing value breaks it (no data is not zero).
function line(svg, values, cls) {
  const max = Math.max(1, ...values.filter((v) => v !== null && v !== undefined));
  const n = values.length;
  let run = [];
  const flush = () => {
    if (run.length > 0) {
      const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      pl.setAttribute("points", run.join(" "));
      if (cls) pl.setAttribute("class", cls);
      svg.appendChild(pl);
    }
    run = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) return flush();
    run.push((n < 2 ? 0 : (300 * i) / (n - 1)).toFixed(1) + "," + (58 - (56 * v) / max).toFixed(1));
  });
  flush();
}

function renderSeries(series) {
  const last = series[series.length - 1];
  for (const id of ["chart-tps", "chart-depth", "chart-ttft"]) $(id).replaceChildren();
  line($("chart-tps"), series.map((p) => p.tokens_per_s));
  line($("chart-depth"), series.map((p) => p.queue_depth));
  line($("chart-ttft"), series.map((p) => p.ttft_p50_ms));
  line($("chart-ttft"), series.map((p) => p.ttft_p99_ms), "p99");
  $("now-tps").textContent = last ? String(last.tokens_per_s) : "–";
  $("now-depth").textContent = last ? String(last.queue_depth) : "–";
  $("now-ttft").textContent = last && last.ttft_p50_ms !== undefined ? last.ttft_p50_ms + " / " + last.ttft_p99_ms : "–";
}

function render(s) {
  snapshot = s;
  const admin = s.role === "admin";
  for (const f of document.querySelectorAll("form.admin")) f.hidden = !admin;
  renderPools(s.pools);
  renderTenants(s.tenants);
  renderTasks(s.tasks, s.tasks_total);
  $("charts").hidden = !admin;
  renderFailures(s.failures);
  renderSeries(s.series);
  $("status").textContent = "tenant " + s.tenant + " (" + s.role + "), updated " + new Date(s.at_ms).toLocaleTimeString();
  $("status").dataset.at = String(s.at_ms);
}

async function poll() {
  try {
    const r = await api("GET", "/v1/console");
    if (r.status === 200) {
      $("key-form").hidden = true;
      $("app").hidden = false;
      $("forget").hidden = !key();
      render(r.data);
    } else if (r.status === 401) {
      const refused = key() !== null;
      sessionStorage.removeItem(KEY);
      $("app").hidden = true;
      $("key-form").hidden = false;
      $("status").textContent = refused ? "the key was refused" : "a key is needed";
    } else {
      $("status").textContent = "the server answered " + r.status + (r.data && r.data.message ? ": " + r.data.message : "");
    }
  } catch (e) {
    $("status").textContent = "cannot reach the server";
  }
}

let askedFrom = null;

function ask(text, run) {
  pending = run;
  askedFrom = document.activeElement;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

function closeConfirm() {
  pending = null;
  $("confirm").hidden = true;
  if (askedFrom && document.contains(askedFrom)) askedFrom.focus();
  askedFrom = null;
}

async function done(r, what) {
  const ok = r.status >= 200 && r.status < 300;
  $("result").textContent = what + ": " + (ok ? "done (" + r.status + ")" : "refused (" + r.status + (r.data && r.data.message ? ": " + r.data.message : "") + ")");
  $("result").dataset.status = String(r.status);
  poll();
}

function wire() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    poll();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
  $("confirm-no").addEventListener("click", closeConfirm);
  $("confirm").addEventListener("keydown", (e) => { if (e.key === "Escape") closeConfirm(); });
  $("confirm-yes").addEventListener("click", async () => {
    const run = pending;
    closeConfirm();
    if (run) await run();
  });
  $("f-drain").addEventListener("submit", (e) => {
    e.preventDefault();
    const pool = $("drain-pool").value, deadline = Number($("drain-deadline").value);
    ask("Drain pool " + pool + "? Running tasks get " + deadline + " ms; queued tasks end.", async () =>
      done(await api("POST", "/v1/pools/" + encodeURIComponent(pool) + "/drain", { deadline_ms: deadline }), "drain " + pool));
  });
  $("f-reload").addEventListener("submit", (e) => {
    e.preventDefault();
    const pool = $("reload-pool").value, body = { model_ref: $("reload-model").value.trim() };
    const prof = $("reload-profile").value.trim();
    if (prof) body.sampler_profile_version = prof;
    ask("Reload pool " + pool + " onto " + body.model_ref + "?", async () =>
      done(await api("POST", "/v1/pools/" + encodeURIComponent(pool) + "/reload", body), "reload " + pool));
  });
  $("f-add").addEventListener("submit", (e) => {
    e.preventDefault();
    const pool = $("add-pool").value, url = $("add-url").value.trim();
    ask("Add the engine at " + url + " to pool " + pool + "?", async () =>
      done(await api("POST", "/v1/pools/" + encodeURIComponent(pool) + "/replicas", { url }), "add replica"));
  });
  $("f-remove").addEventListener("submit", (e) => {
    e.preventDefault();
    const [pool, rep] = $("remove-replica").value.split("\u0000");
    if (!pool || !rep) return;
    ask("Remove replica " + rep + " from pool " + pool + "? Its running tasks get 60 s.", async () =>
      done(await api("DELETE", "/v1/pools/" + encodeURIComponent(pool) + "/replicas/" + encodeURIComponent(rep)), "remove " + rep));
  });
  $("f-cancel").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("cancel-id").value.trim();
    ask("Cancel task " + id + "?", async () =>
      done(await api("POST", "/v1/tasks/" + encodeURIComponent(id) + "/cancel"), "cancel " + id.slice(0, 8)));
  });
  $("tasks").addEventListener("click", (e) => {
    const id = e.target && e.target.dataset ? e.target.dataset.cancel : undefined;
    if (!id) return;
    $("cancel-id").value = id;
    ask("Cancel task " + id + "?", async () =>
      done(await api("POST", "/v1/tasks/" + encodeURIComponent(id) + "/cancel"), "cancel " + id.slice(0, 8)));
  });
}

// one poll at a time: the next starts a second after the last answer
async function loop() {
  await poll();
  setTimeout(loop, 1000);
}

wire();
loop();
