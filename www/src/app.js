// Stateline's web UI: browse keys, watch them live, edit them, and see the server's state.
//
// Reads and writes go over the plain HTTP API (so every error is the server's own, with its
// status); live views go through the project's own client script (`/_client.js`, the global
// `Stateline`), the same one any page can include. Everything is served by the server itself.
import { createJSONEditor } from "vanilla-jsoneditor";
import { live } from "./live.js";
import { chartSvg, Rates, Series } from "./chart.js";
import { lineDiff } from "./diff.js";

const $ = (sel, root = document) => root.querySelector(sel);
const view = $("#view");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const pretty = (v) => JSON.stringify(v, null, 2);

// ---- the token and HTTP ----------------------------------------------------------------------

const TOKEN_KEY = "stateline.token";
export const token = () => localStorage.getItem(TOKEN_KEY) || "";

async function api(method, path, { body, headers = {}, raw = false } = {}) {
  const h = { ...headers };
  if (token()) h.authorization = `Bearer ${token()}`;
  if (body !== undefined && !h["content-type"]) h["content-type"] = "application/json";
  const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : body });
  if (raw) return r;
  const text = await r.text();
  if (!r.ok) {
    let detail = text.trim();
    try { const p = JSON.parse(text); detail = p.detail || p.title || detail; } catch {}
    const e = new Error(`${r.status}: ${detail || r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return { r, json: text ? JSON.parse(text) : null };
}

const keyUrl = (k) => "/" + k.split("/").map(encodeURIComponent).join("/").replace(/%2A/g, "*");

function toast(msg, bad = false) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = `toast show${bad ? " bad" : ""}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = "toast"), bad ? 5000 : 2500);
}

const fmtTime = (ns) => {
  if (!ns) return "—";
  const d = new Date(Number(BigInt(Math.trunc(ns)) / 1000000n));
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
};

// What changed between two JSON values, as paths: shown next to a live value.
export function diffPaths(a, b, at = "", out = []) {
  if (out.length > 50) return out;
  if (a === b) return out;
  const isObj = (x) => x && typeof x === "object";
  if (!isObj(a) || !isObj(b) || Array.isArray(a) !== Array.isArray(b)) {
    out.push({ op: a === undefined ? "add" : b === undefined ? "remove" : "replace", path: at || "/" });
    return out;
  }
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) diffPaths(a[k], b[k], `${at}/${k}`, out);
  }
  return out;
}

// ---- pages ---------------------------------------------------------------------------------

let cleanup = [];
const onLeave = (f) => cleanup.push(f);

async function route() {
  for (const f of cleanup.splice(0)) { try { f(); } catch {} }
  const hash = decodeURIComponent(location.hash.slice(1) || "/keys");
  const [, page, ...rest] = hash.split("/");
  const arg = rest.join("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page || (page === "key" && a.dataset.nav === "keys")));
  try {
    if (page === "key") return await keyPage(arg);
    if (page === "live") return await livePage(arg);
    if (page === "state") return await statePage();
    return await keysPage(new URLSearchParams(location.hash.split("?")[1] || ""));
  } catch (e) {
    view.innerHTML = `<div class="panel error">${esc(e.message)}</div>`;
  }
}

// Keys: search by prefix or glob, paged by the keys API, which lists each entry's metadata too
// (one request per page, none per key).
async function keysPage(params) {
  const filter = params.get("filter") || "";
  const page = Math.max(1, Number(params.get("page")) || 1);
  const limit = Number(params.get("limit")) || 25;
  view.innerHTML = `
    <h1>Keys</h1>
    <div class="panel">
      <form class="row" id="search">
        <input class="grow" name="filter" placeholder="prefix (books/) or glob (books/*)" value="${esc(filter)}" aria-label="filter">
        <select name="limit" aria-label="page size">${[10, 25, 50, 100].map((n) => `<option ${n === limit ? "selected" : ""}>${n}</option>`).join("")}</select>
        <button>Search</button>
        <button type="button" class="ghost" id="new-key">New key</button>
      </form>
    </div>
    <div class="panel"><div id="keys">Loading…</div></div>`;
  $("#search").onsubmit = (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/keys?filter=${encodeURIComponent(f.get("filter"))}&limit=${f.get("limit")}`;
  };
  $("#new-key").onclick = () => newKeyDialog(filter);
  const { json } = await api("GET", `/?api=keys&filter=${encodeURIComponent(filter)}&page=${page}&limit=${limit}`);
  const keys = json.keys || [];
  const metas = keys.map((k, i) => json.items?.[i] ?? { key: k });
  const pages = Math.max(1, Math.ceil(json.total / limit));
  const link = (p) => `#/keys?filter=${encodeURIComponent(filter)}&limit=${limit}&page=${p}`;
  $("#keys").innerHTML = keys.length === 0
    ? `<p class="muted">No keys${filter ? ` match <code>${esc(filter)}</code>` : " yet"}. Create one with <b>New key</b>.</p>`
    : `<table><thead><tr><th>Key</th><th class="hide-sm">Created</th><th class="hide-sm">Updated</th><th>Rev</th></tr></thead><tbody>
      ${keys.map((k, i) => `<tr data-key="${esc(k)}"><td class="key"><a href="#/key/${esc(k)}">${esc(k)}</a></td>
        <td class="hide-sm">${esc(fmtTime(metas[i].created))}</td><td class="hide-sm">${esc(metas[i].updated ? fmtTime(metas[i].updated) : "—")}</td>
        <td>${esc(metas[i].revision ?? "")}</td></tr>`).join("")}
      </tbody></table>
      <div class="pager"><span class="muted">${json.total} keys · page ${page} of ${pages}</span>
        ${page > 1 ? `<a class="ghost" href="${link(page - 1)}">‹ Prev</a>` : ""}
        ${page < pages ? `<a href="${link(page + 1)}">Next ›</a>` : ""}</div>`;
}

function newKeyDialog(prefix) {
  const key = prompt("Key to create (segments of letters, digits, _ . -, separated by /):", prefix.replace(/\*.*$/, ""));
  if (key) location.hash = `#/key/${key.replace(/^\/+/, "")}?new`;
}

// One key (or a glob): its value live through the client, the editor, and the write buttons.
async function keyPage(arg) {
  const [key, query] = arg.split("?");
  const creating = query === "new";
  const glob = key.includes("*");
  view.innerHTML = `
    <h1><span class="path">${esc(key)}</span> <span class="badge" id="rev">${creating ? "new" : "…"}</span>
      <a class="ghost" href="#/live/${esc(key)}" style="font-size:0.85rem">watch live ›</a></h1>
    <div class="panel"><dl class="meta" id="meta"></dl>
      <p class="muted" id="live-note" style="margin:0.6rem 0 0"></p>
      <ul class="changes" id="changes"></ul></div>
    <div class="panel">
      <div class="editor" id="editor"></div>
      <div class="row" style="margin-top:0.7rem">
        ${glob ? `<button id="push">Push to list</button>` : `<button id="save">${creating ? "Create" : "Save"}</button>`}
        ${glob ? "" : `<button class="ghost" id="reload">Reload</button>`}
        <span class="grow"></span>
        ${creating ? "" : `<button class="danger" id="delete">Delete</button>`}
      </div>
      <div id="outcome"></div>
    </div>
    ${glob || creating ? "" : `<div class="panel" id="history-panel"><h3 style="margin-top:0">History</h3>
      <div id="history"><p class="muted">Loading…</p></div><div id="history-diff"></div></div>`}`;
  let revision = null; // the revision the editor's content is based on
  let etag = null;     // and its entity tag, for the compare-and-swap
  // What the meta panel shows: the last loaded metadata, then the live subscription's updates.
  let meta = null;
  let liveRevision = null;
  let current;         // the server's value as last seen
  // The text mode reports edits after a short debounce: remember that one is pending, and let
  // it land before reading the value, so Save never sends the text from before the last keys.
  let pending = false;
  const editor = createJSONEditor({
    target: $("#editor"),
    props: {
      content: { json: glob ? {} : creating ? {} : null }, mode: "text", mainMenuBar: true, navigationBar: false,
      onChange: () => { pending = false; },
    },
  });
  for (const ev of ["input", "paste", "cut", "drop"]) $("#editor").addEventListener(ev, () => { pending = true; }, true);
  onLeave(() => editor.destroy());
  const editorValue = async () => {
    for (let i = 0; pending && i < 40; i++) await new Promise((r) => setTimeout(r, 25));
    const c = editor.get();
    if (c.json !== undefined) return c.json;
    return JSON.parse(c.text); // throws a SyntaxError shown to the user: nothing is sent
  };
  // `revision`: the server's current one (live); `loaded`: the one the editor's draft is based on.
  const renderMeta = () => {
    const m = meta;
    $("#meta").innerHTML = [["created", fmtTime(m?.created)], ["updated", m?.updated ? fmtTime(m.updated) : "—"],
      ["revision", liveRevision ?? revision ?? "—"], ["loaded revision", revision ?? "—"], ["index", m?.index ?? "—"]]
      .map(([k, v]) => `<div data-meta="${k}"><dt>${k}</dt><dd>${esc(v)}</dd></div>`).join("");
  };
  const showMeta = (m, rev) => {
    meta = m;
    liveRevision = rev == null ? null : Number(rev);
    renderMeta();
    $("#rev").textContent = rev == null ? "absent" : `rev ${rev}`;
  };
  const load = async () => {
    const { r, json } = await api("GET", keyUrl(key));
    revision = r.headers.get("x-revision");
    etag = r.headers.get("etag");
    current = json.data;
    showMeta(json, revision);
    editor.set({ json: json.data });
  };
  if (!creating && !glob) await load().catch((e) => { if (e.status === 404) showMeta(null, null); else throw e; });
  if (glob || creating) showMeta(null, null);

  // History: the key's last versions, two of them compared.
  const history = glob || creating ? null : historyPanel(key);
  if (history) onLeave(history.stop);

  // Live: every change to this key shows what changed; the editor keeps the user's draft.
  if (!glob) {
    const stop = live.watch(key, (value, info) => {
      if (!info?.initial) history?.refresh();
      const before = current;
      current = value;
      const changes = diffPaths(before, value);
      if (before !== undefined && changes.length) {
        const li = document.createElement("li");
        li.className = "flash";
        li.innerHTML = `<span class="op">${esc(new Date().toLocaleTimeString())}</span> ${changes.map((c) => `${esc(c.op)} <b>${esc(c.path)}</b>`).join(", ")}`;
        $("#changes").prepend(li);
        $("#meta").classList.remove("flash"); void $("#meta").offsetWidth; $("#meta").classList.add("flash");
      }
      if (info?.revision != null) $("#rev").textContent = `rev ${info.revision} (live)`;
      // The metadata follows the live value: updated time and revision as the server reports them.
      if (value === undefined || value === null) {
        if (!info?.initial) { meta = { index: meta?.index }; liveRevision = null; renderMeta(); }
      } else if (info?.revision != null) {
        meta = { ...meta, created: info.created, updated: info.updated };
        liveRevision = info.revision;
        renderMeta();
      }
      $("#live-note").textContent = value === undefined || value === null
        ? "Live: the key does not exist (yet)."
        : "Live: changes made elsewhere appear below as they happen. Saving uses the revision you loaded, so a concurrent change is reported as a conflict.";
    });
    onLeave(stop);
  }

  const outcome = (html) => ($("#outcome").innerHTML = html);
  $("#reload")?.addEventListener("click", () => load().then(() => { outcome(""); toast("Reloaded"); }).catch((e) => toast(e.message, true)));
  $("#save")?.addEventListener("click", async () => {
    let value;
    try { value = await editorValue(); } catch (e) { return outcome(`<p class="error">Not valid JSON: ${esc(e.message)}. Nothing was sent.</p>`); }
    try {
      if (creating) {
        // Create only if absent: someone else creating it first is a conflict too.
        await api("POST", keyUrl(key), { body: JSON.stringify(value), headers: { "if-none-match": "*" } });
        toast("Created");
        location.hash = `#/key/${key}`;
        return;
      }
      if (revision == null) {
        await api("POST", keyUrl(key), { body: JSON.stringify(value), headers: { "if-none-match": "*" } });
      } else {
        // Compare-and-swap on the revision the draft started from (If-Match its entity tag).
        await api("PUT", keyUrl(key), { body: JSON.stringify(value), headers: { "if-match": etag } });
      }
      await load();
      outcome("");
      toast("Saved");
    } catch (e) {
      if (e.status === 409 || e.status === 412) {
        let theirs = "";
        try { const { r, json } = await api("GET", keyUrl(key)); theirs = pretty(json.data); revision ??= r.headers.get("x-revision"); } catch {}
        outcome(`<div class="conflict" id="conflict"><b>Conflict:</b> this key changed since you loaded revision ${esc(revision ?? "—")}. Your edit was <b>not</b> saved.
          <p class="muted">The server now holds:</p><pre>${esc(theirs)}</pre>
          <div class="row"><button id="take-theirs" class="ghost">Load theirs</button><button id="overwrite" class="danger">Overwrite with mine</button></div></div>`);
        $("#take-theirs").onclick = () => load().then(() => outcome(""));
        $("#overwrite").onclick = async () => {
          const { r } = await api("GET", keyUrl(key));
          revision = r.headers.get("x-revision");
          etag = r.headers.get("etag");
          $("#save").click();
        };
      } else {
        outcome(`<p class="error">${esc(e.message)}</p>`);
      }
    }
  });
  $("#push")?.addEventListener("click", async () => {
    let value;
    try { value = await editorValue(); } catch (e) { return outcome(`<p class="error">Not valid JSON: ${esc(e.message)}. Nothing was sent.</p>`); }
    try {
      const { json } = await api("POST", keyUrl(key), { body: JSON.stringify(value) });
      toast(`Pushed as ${json.index}`);
    } catch (e) { outcome(`<p class="error">${esc(e.message)}</p>`); }
  });
  $("#delete")?.addEventListener("click", async () => {
    if (!confirm(`Delete ${key}?`)) return;
    try {
      await api("DELETE", keyUrl(key), { headers: etag ? { "if-match": etag } : {} });
      toast("Deleted");
      location.hash = "#/keys";
    } catch (e) {
      outcome(`<p class="error">${esc(e.message)}${e.status === 412 || e.status === 409 ? " — the key changed since you loaded it; reload first." : ""}</p>`);
    }
  });
}

// How many versions the key page's history asks for.
const HISTORY_VERSIONS = 20;

// The key page's history panel: the last versions (`GET /<key>?history=N`), newest first, with
// two chosen (A, B: by default the previous and the newest) and the line diff between them.
// `refresh()` reloads it (debounced: a burst of live changes is one request).
function historyPanel(key) {
  let versions = [], a = 1, b = 0, timer = null, stopped = false;
  const el = () => $("#history"), out = () => $("#history-diff");
  const label = (v) => (v.deleted ? "deleted" : "");
  const render = () => {
    if (!el()) return;
    if (versions.length === 0) {
      el().innerHTML = '<p class="muted">No versions yet.</p>';
      out().innerHTML = "";
      return;
    }
    a = Math.min(a, versions.length - 1);
    b = Math.min(b, versions.length - 1);
    el().innerHTML = `<table class="history"><thead><tr><th>A</th><th>B</th><th>Revision</th><th>Written</th><th class="hide-sm">Value</th></tr></thead><tbody>
      ${versions.map((v, i) => `<tr data-revision="${esc(v.revision)}"${v.deleted ? ' class="deleted"' : ""}>
        <td><input type="radio" name="hist-a" value="${i}" ${i === a ? "checked" : ""} aria-label="compare from revision ${esc(v.revision)}"></td>
        <td><input type="radio" name="hist-b" value="${i}" ${i === b ? "checked" : ""} aria-label="compare to revision ${esc(v.revision)}"></td>
        <td>${esc(v.revision)} ${label(v) ? `<span class="badge bad">${label(v)}</span>` : ""}</td><td>${esc(fmtTime(v.updated))}</td>
        <td class="hide-sm"><code class="clip">${esc(v.deleted ? "—" : JSON.stringify(v.data))}</code></td></tr>`).join("")}</tbody></table>`;
    el().querySelectorAll("input[type=radio]").forEach((r) => r.addEventListener("change", () => {
      if (r.name === "hist-a") a = Number(r.value); else b = Number(r.value);
      showDiff();
    }));
    showDiff();
  };
  const showDiff = () => {
    const va = versions[a], vb = versions[b];
    if (!va || !vb) return;
    const lines = lineDiff(va.deleted ? undefined : va.data, vb.deleted ? undefined : vb.data);
    const changed = lines.some((l) => l.op !== " ");
    out().innerHTML = `<p class="muted">From revision <b id="diff-a">${esc(va.revision)}</b>${va.deleted ? " (deleted)" : ""} to revision <b id="diff-b">${esc(vb.revision)}</b>${vb.deleted ? " (deleted)" : ""}${changed ? "" : ": the same value"}.</p>
      <pre class="diff">${lines.map((l) => `<span class="${l.op === "+" ? "add" : l.op === "-" ? "del" : "same"}">${esc(l.op)} ${esc(l.line)}</span>`).join("")}</pre>`;
  };
  const load = async () => {
    timer = null;
    try {
      const { json } = await api("GET", `${keyUrl(key)}?history=${HISTORY_VERSIONS}`);
      if (stopped || !el()) return;
      // A server without history answers the key itself: say so rather than "no versions".
      if (!Array.isArray(json)) { el().innerHTML = '<p class="muted">This server keeps no history.</p>'; return; }
      versions = json;
      render();
    } catch (e) {
      if (stopped || !el()) return;
      if (e.status === 404) { versions = []; render(); return; }
      el().innerHTML = `<p class="muted">History is not available: ${esc(e.message)}</p>`;
    }
  };
  load();
  return {
    refresh() { if (!timer && !stopped) timer = setTimeout(load, 150); },
    stop() { stopped = true; clearTimeout(timer); },
  };
}

// Live: subscribe to a key or a glob and watch every change arrive.
async function livePage(pattern) {
  view.innerHTML = `
    <h1>Live</h1>
    <div class="panel"><form class="row" id="watch">
      <input class="grow" name="p" placeholder="key or glob, e.g. chat/*" value="${esc(pattern)}" aria-label="pattern">
      <button>Watch</button></form></div>
    <div class="panel" id="live-out">${pattern ? "Connecting…" : '<p class="muted">Enter a key or a glob to watch it change in real time.</p>'}</div>`;
  $("#watch").onsubmit = (e) => { e.preventDefault(); location.hash = `#/live/${new FormData(e.target).get("p").trim()}`; };
  if (!pattern) return;
  let seen = 0;
  const rows = new Map(); // key → { value, tr }
  const out = $("#live-out");
  out.innerHTML = `<p class="muted" id="live-count">Waiting for the first snapshot…</p>
    <table><thead><tr><th>Key</th><th>Value</th><th class="hide-sm">Changed</th></tr></thead><tbody id="live-rows"></tbody></table>`;
  const tbody = $("#live-rows");
  const render = (key, value) => {
    let row = rows.get(key);
    if (value === undefined || value === null) {
      if (row) { row.tr.remove(); rows.delete(key); }
      return;
    }
    const changes = row ? diffPaths(row.value, value) : [{ op: "add", path: "/" }];
    if (!row) {
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      tbody.prepend(tr);
      row = { tr };
      rows.set(key, row);
    }
    row.value = value;
    row.tr.innerHTML = `<td class="key"><a href="#/key/${esc(key)}">${esc(key)}</a></td><td><pre class="value">${esc(pretty(value))}</pre></td>
      <td class="hide-sm mono">${changes.map((c) => `${esc(c.op)} ${esc(c.path)}`).join("<br>")}</td>`;
    row.tr.classList.remove("flash"); void row.tr.offsetWidth; row.tr.classList.add("flash");
  };
  const stop = live.watchMany(pattern, (items, changedKeys) => {
    seen += 1;
    for (const k of changedKeys) render(k, items.get(k));
    $("#live-count").textContent = `${rows.size} keys · ${seen} updates received`;
  });
  onLeave(stop);
}

// The State page's samples: kept in memory while the UI is open (a few minutes, chart.js's
// window), so leaving State and coming back shows the history sampled so far.
const samples = { writes: new Series(), frames: new Series(), connections: new Series() };
const rates = new Rates();
const CHARTS = [
  ["writes", "writes / s", "#335cff"],
  ["frames", "frames / s", "#16a34a"],
  ["connections", "connections", "#d97706"],
];

// State: connections, pools, rates (with charts of the last minutes), presence, memory, uptime,
// filters and rules.
async function statePage() {
  view.innerHTML = `<h1>State</h1><div class="cards" id="cards"></div>
    <div class="panel"><h3 style="margin-top:0">The last few minutes</h3><div class="charts" id="charts"></div></div>
    <div class="panel"><h3 style="margin-top:0">Presence</h3><div id="presence"><p class="muted">Connecting…</p></div></div>
    <div class="panel"><h3 style="margin-top:0">Subscriptions per pool</h3><div id="pools"></div></div>
    <div class="panel"><h3 style="margin-top:0">Filters and rules</h3><div id="filters"></div></div>`;
  onLeave(presencePanel($("#presence")));
  const tick = async () => {
    const [info, state, filters, metrics] = await Promise.all([
      api("GET", "/?api=info").then((x) => x.json),
      api("GET", "/?api=state").then((x) => x.json),
      api("GET", "/?api=filters").then((x) => x.json).catch(() => null),
      api("GET", "/_metrics", { raw: true }).then((r) => (r.ok ? r.text() : "")).catch(() => ""),
    ]);
    if (!document.body.contains(view) || !$("#cards")) return; // left the page meanwhile
    const m = parseMetrics(metrics);
    const now = Date.now();
    // Rates from the server's counters between two polls (the sequence number when the server
    // has no /_metrics).
    const writesTotal = m.stateline_writes_total ?? Number(BigInt("0x" + (info.seq || "0")) % 1000000000n);
    const w = rates.rate("writes", now, writesTotal);
    const f = rates.rate("frames", now, m.stateline_frames_total ?? null);
    const conns = state.totalConnections ?? m.stateline_connections ?? null;
    samples.writes.add(now, w);
    samples.frames.add(now, f);
    samples.connections.add(now, conns);
    const shown = (s) => (s.last == null ? "…" : Number.isInteger(s.last) ? String(s.last) : s.last.toFixed(1));
    const uptime = info.started ? Math.max(0, Date.now() - Number(BigInt(info.started) / 1000000n)) / 1000 : null;
    const mem = m.process_resident_memory_bytes;
    const cards = [
      ["connections", conns ?? "—"], ["pools", info.pools], ["keys", info.keys],
      ["writes / s", shown(samples.writes)], ["frames / s (one per pool)", shown(samples.frames)],
      ["memory", mem ? `${(mem / 1048576).toFixed(1)} MiB` : `${((info.valueBytes || 0) / 1024).toFixed(1)} KiB data`],
      ["uptime", uptime == null ? "—" : fmtDuration(uptime)], ["version", info.version],
    ];
    $("#cards").innerHTML = cards.map(([l, n]) => `<div class="card"><div class="n">${esc(n)}</div><div class="l">${esc(l)}</div></div>`).join("");
    $("#charts").innerHTML = CHARTS.map(([name, label, color]) => `<figure class="chart-box" data-chart="${name}">
      <figcaption><span>${esc(label)}</span> <b>${esc(shown(samples[name]))}</b></figcaption>
      ${chartSvg(samples[name], { now, label, color })}</figure>`).join("");
    const pools = state.pools || [];
    $("#pools").innerHTML = pools.length === 0 ? '<p class="muted">No subscriptions.</p>'
      : `<table><thead><tr><th>Pattern</th><th>Connections</th><th class="hide-sm">Encoding</th><th class="hide-sm">Version</th></tr></thead><tbody>
        ${pools.map((p) => `<tr><td class="key"><a href="#/live/${esc(p.key)}">${esc(p.key)}</a></td><td>${esc(p.connections)}</td><td class="hide-sm">${esc(p.encoding)}</td><td class="hide-sm mono">${esc(p.version)}</td></tr>`).join("")}</tbody></table>`;
    const fs = filters?.filters || [];
    const rules = filters?.rules || [];
    $("#filters").innerHTML = (filters?.static ? '<p><span class="badge">static mode</span> only paths with a filter are served.</p>' : "")
      + (fs.length || rules.length ? `<table><thead><tr><th>Pattern</th><th>Kind</th></tr></thead><tbody>
        ${fs.map((f) => `<tr><td class="key">${esc(f.path)}</td><td>${esc(f.kind)}</td></tr>`).join("")}
        ${rules.map((r) => `<tr><td class="key">${esc(r.pattern)}</td><td>rule: read ${esc((r.read || []).join("|") || "none")}, write ${esc((r.write || []).join("|") || "none")}, delete ${esc((r.delete || []).join("|") || "none")}${r.schema ? ", JSON Schema" : ""}${r.readOnly ? ", read-only" : ""}</td></tr>`).join("")}</tbody></table>`
        : '<p class="muted">No filters or rules: every key is public.</p>');
  };
  await tick();
  // A second sample soon after the first, so rates show without waiting a full period.
  let timer = setTimeout(function again() {
    tick().catch((e) => toast(e.message, true));
    timer = setTimeout(again, POLL_MS);
  }, 1000);
  onLeave(() => clearTimeout(timer));
}
// How often the State page samples the server (its charts' resolution).
const POLL_MS = 2000;

// Presence: the members of every room (`presence/<room>/<member>`, as `db.presence` writes them),
// grouped by room, live through one glob subscription. Returns the function that stops it.
function presencePanel(el) {
  return live.watchMany("presence/*/*", (items) => {
    const rooms = new Map();
    for (const [k, v] of items) {
      const [, room, ...member] = k.split("/");
      if (!rooms.has(room)) rooms.set(room, []);
      rooms.get(room).push([member.join("/"), v]);
    }
    el.innerHTML = rooms.size === 0
      ? '<p class="muted">Nobody is present. Pages that call <code>db.presence(room, value)</code> appear here, grouped by room.</p>'
      : [...rooms].sort(([a], [b]) => a.localeCompare(b)).map(([room, members]) => `<div class="room" data-room="${esc(room)}">
          <h4><a href="#/live/presence/${esc(room)}/*">${esc(room)}</a> <span class="badge">${members.length}</span></h4>
          <ul class="members">${members.sort(([a], [b]) => a.localeCompare(b)).map(([id, v]) => `<li data-member="${esc(id)}"><code>${esc(id)}</code>
            <span class="muted">${esc(v === true || v == null ? "" : typeof v === "object" ? JSON.stringify(v) : v)}</span></li>`).join("")}</ul></div>`).join("");
  });
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s` : `${Math.floor(s)}s`;
}

// The Prometheus text format, sums per metric name (labels added up).
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
  }
  return out;
}

// ---- chrome --------------------------------------------------------------------------------

live.onState((s) => {
  const el = $("#conn");
  el.textContent = s;
  el.className = `conn ${s}`;
});
$("#token-btn").onclick = () => {
  $("#token-input").value = token();
  $("#token-dialog").showModal();
};
$("#token-dialog").addEventListener("close", () => {
  const v = $("#token-dialog").returnValue;
  if (v === "save") localStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
  if (v === "clear") localStorage.removeItem(TOKEN_KEY);
  if (v === "save" || v === "clear") { live.reconnect(token()); route(); }
});
window.addEventListener("hashchange", route);
live.start(token());
route();
