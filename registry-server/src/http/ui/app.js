// The registry dashboard: reads the JSON API of the server that serves it and keeps each
// view current with the API's blocking queries (one long-poll loop per view).
//
// Every value from the API reaches the DOM through textContent (see `el`), never as HTML.
// The page loads nothing but this server's own three files; with ACLs on it asks for a
// token, keeps it in sessionStorage and sends it as `Authorization: Bearer` on every call.
"use strict";

/** sessionStorage key of the token secret. */
const TOKEN_KEY = "registry.token";
/** How long the server may hold a blocking query before answering unchanged. */
const BLOCKING_WAIT = "5m";
/** First wait after a failed call; doubled on each further failure, up to the max. */
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
/** `/v1/cluster` has no blocking form: it is read again after this long at the latest, */
const CLUSTER_REFRESH_MS = 5000;
/** ...and when another view changes, but never more often than this. */
const CLUSTER_MIN_GAP_MS = 500;
/** How often ages (a lock held "12s") are redrawn, from data already in the page. */
const AGE_TICK_MS = 1000;

// ------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------

/**
 * Makes an element. `text` becomes its textContent and string children become text
 * nodes, so data is never parsed as HTML.
 */
function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  if (options.title) node.title = options.title;
  for (const [key, value] of Object.entries(options.data || {})) node.dataset[key] = String(value);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** A table cell; `className` "num" right-aligns it. */
function cell(content, className) {
  const td = el("td", { className });
  if (content instanceof Node) td.append(content);
  else td.textContent = content === null || content === undefined ? "" : String(content);
  return td;
}

/** A muted dash for a value that is not there. */
function none() {
  return el("span", { className: "muted", text: "—" });
}

/** Waits `ms`, or less if `abort` (an AbortSignal) fires first. */
function sleep(ms, abort) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      abort.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    abort.addEventListener("abort", done);
  });
}

/** "4s", "3m 05s", "2h 03m", "3d 4h": how long `ms` is, to the second. */
function formatAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A span showing how long ago `sinceMs` (ms since the epoch) was; kept ticking. */
function age(sinceMs) {
  const span = el("span", {
    className: "age",
    data: { sinceMs },
    title: new Date(sinceMs).toLocaleString(),
  });
  span.textContent = formatAge(Date.now() - sinceMs);
  return span;
}

/** Redraws every age in the page from its `data-since-ms`. */
function tickAges() {
  const now = Date.now();
  for (const span of document.querySelectorAll(".age")) {
    span.textContent = formatAge(now - Number(span.dataset.sinceMs));
  }
}

/** A run of small labels (tags, meta pairs, candidate names). */
function chips(values, className = "chip") {
  if (values.length === 0) return none();
  const box = el("span", { className: "chips" });
  for (const value of values) box.append(el("span", { className, text: value }));
  return box;
}

/** Puts `rows` in `table`'s body, and shows `empty` instead when there are none. */
function fillTable(table, rows, empty) {
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
  if (empty) empty.hidden = rows.length !== 0;
}

// ------------------------------------------------------------------------------------
// Talking to the API
// ------------------------------------------------------------------------------------

/** The token secret in use, kept per tab in sessionStorage. */
const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },
  set(secret) {
    sessionStorage.setItem(TOKEN_KEY, secret);
  },
  forget() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** A call that did not give an answer to show: the server refused it, or never answered. */
class ApiError extends Error {
  constructor(status, code, message, retryAfterMs) {
    super(message);
    this.name = "ApiError";
    /** HTTP status; 0 when no answer arrived. */
    this.status = status;
    /** The API's stable error code (`too_many_waiters`, `no_leader`, ...). */
    this.code = code;
    /** What `Retry-After` asked for, in ms, if the answer had one. */
    this.retryAfterMs = retryAfterMs;
  }

  /** 401 or 403: a (better) token would help, trying again without one would not. */
  get needsToken() {
    return this.status === 401 || this.status === 403;
  }
}

/** `Retry-After` (seconds, or an HTTP date) in ms; null if absent or unreadable. */
function retryAfterMs(response) {
  const value = response.headers.get("Retry-After");
  if (value === null) return null;
  if (/^\d+$/.test(value.trim())) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

/**
 * GETs `path` and answers `{ body, index }`, `index` being the answer's
 * `X-Registry-Index`. Throws an ApiError for a refusal or a network failure, and lets an
 * AbortError through when `abort` fires.
 */
async function getJson(path, abort) {
  const headers = { Accept: "application/json" };
  const secret = token.get();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  let response;
  try {
    response = await fetch(path, { headers, signal: abort, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "the registry did not answer", null);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    if (error.name === "AbortError") throw error;
  }
  if (!response.ok) {
    const detail = body && body.error ? body.error : {};
    throw new ApiError(
      response.status,
      detail.code || "http_" + response.status,
      detail.message || `HTTP ${response.status}`,
      retryAfterMs(response),
    );
  }
  if (body === null) {
    throw new ApiError(response.status, "invalid_json", "the answer was not JSON", null);
  }
  return { body, index: Number(response.headers.get("X-Registry-Index")) };
}

/** `path` as a blocking query: held by the server until its view changes after `index`. */
function blocking(path, index) {
  const separator = path.includes("?") ? "&" : "?";
  return `${path}${separator}index=${index}&wait=${BLOCKING_WAIT}`;
}

// ------------------------------------------------------------------------------------
// Live views
// ------------------------------------------------------------------------------------

/**
 * Counts changes seen by the blocking views, so the cluster view (which cannot block)
 * can be read again after one. It has a single waiter: the cluster view's loop.
 */
const changes = {
  count: 0,
  wake: null,
  notify() {
    this.count += 1;
    const wake = this.wake;
    this.wake = null;
    if (wake) wake();
  },
  /** Resolves once a change after `seen` (an earlier `count`) has happened. */
  after(seen) {
    if (this.count > seen) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  },
};

/**
 * One view of the page and the loop that keeps it current. A blocking view asks again
 * with `?index=<last X-Registry-Index>&wait=5m`, which the server holds until the view
 * changes; a view that cannot block is read again after CLUSTER_REFRESH_MS or after
 * another view changed. After an error it waits (1 s doubling to 30 s, or longer if
 * `Retry-After` asks) and starts again with a plain read; a 401 or 403 stops it until a
 * token is given.
 */
class LiveView {
  /**
   * @param {string} name        id prefix of the view's elements (`<name>-status`).
   * @param {() => string|null} path  what to read; null for nothing (no selection).
   * @param {(body: object) => void} render
   * @param {boolean} canBlock    whether `path` takes `index` and `wait`.
   */
  constructor(name, path, render, canBlock) {
    this.name = name;
    this.path = path;
    this.render = render;
    this.canBlock = canBlock;
    this.status = document.getElementById(`${name}-status`);
    /** Aborts the running loop (and its request) when the view starts over. */
    this.controller = null;
  }

  /** (Re)starts the loop from a plain read, dropping any request in flight. */
  start() {
    if (this.controller) this.controller.abort();
    this.controller = new AbortController();
    const path = this.path();
    if (path === null) {
      this.show("", "");
      return;
    }
    this.run(path, this.controller.signal).catch((error) => {
      if (error.name !== "AbortError") showPageError(error);
    });
  }

  /** Sets the small status text in the view's heading. */
  show(kind, text) {
    this.status.className = `view-status ${kind}`;
    this.status.textContent = text;
    // What the view shows after an error may be out of date: dim it until an answer.
    this.status.closest(".card").classList.toggle("stale", kind === "error");
  }

  async run(path, abort) {
    /** Index to block from; 0 asks plainly (at start, and after an error). */
    let index = 0;
    /** Index of the answer on screen, to tell a change from a re-read. */
    let shown = 0;
    let backoff = BACKOFF_FIRST_MS;
    while (!abort.aborted) {
      const seen = changes.count;
      const startedAt = Date.now();
      const blocked = this.canBlock && index > 0;
      try {
        const answer = await getJson(blocked ? blocking(path, index) : path, abort);
        if (!(answer.index > 0)) {
          // Asking again from index 0 would answer at once, again and again.
          throw new ApiError(0, "no_index", "the answer carried no X-Registry-Index", null);
        }
        const changed = answer.index !== shown;
        index = shown = answer.index;
        // The plain read after an error proves little (a refused blocking query would be
        // refused again): only a blocking answer, or any answer of a view that cannot
        // block, ends the backoff.
        if (blocked || !this.canBlock) backoff = BACKOFF_FIRST_MS;
        this.render(answer.body);
        if (this.canBlock) {
          this.show("live", `live · index ${index}`);
          if (changed) changes.notify();
        } else {
          this.show("live", `read at index ${index}`);
          await Promise.race([sleep(CLUSTER_REFRESH_MS, abort), changes.after(seen)]);
          await sleep(CLUSTER_MIN_GAP_MS - (Date.now() - startedAt), abort);
        }
      } catch (error) {
        if (abort.aborted || error.name === "AbortError") return;
        if (!(error instanceof ApiError)) throw error;
        if (error.needsToken) {
          this.show("error", `${error.status}: ${error.message}`);
          askForToken(error);
          return;
        }
        const wait = Math.max(backoff, error.retryAfterMs || 0);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
        this.show("error", `${error.message} (${error.code}); retrying in ${formatAge(wait)}`);
        await sleep(wait, abort);
        // Start again from a plain read: it answers at once, so the page shows it is
        // back (a blocking query would be held, unchanged data and all, for minutes).
        index = 0;
      }
    }
  }
}

// ------------------------------------------------------------------------------------
// Rendering each view
// ------------------------------------------------------------------------------------

/** The service whose instances are shown; kept in the URL's fragment (#service=NAME). */
let selectedService = null;

function serviceFromHash() {
  const match = /^#service=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

/** Makes `name` the selected service in the page (row, heading, URL). */
function markSelected(name) {
  selectedService = name;
  if (serviceFromHash() !== name) history.replaceState(null, "", `#service=${encodeURIComponent(name)}`);
  for (const row of document.querySelectorAll("#services tbody tr")) {
    row.classList.toggle("selected", row.dataset.service === name);
  }
  document.getElementById("instances-title").textContent = `Instances of ${name}`;
}

/** Shows `name`'s instances: the instances view starts over on that service. */
function selectService(name) {
  if (name === selectedService) return;
  markSelected(name);
  views.instances.start();
}

function renderServices(body) {
  const rows = body.services.map((service) => {
    const health = service.healthy === 0 ? "bad" : service.healthy < service.instances ? "warn" : "good";
    const row = el("tr", { data: { service: service.name } },
      cell(service.name),
      cell(el("span", { className: `count ${health}`, text: service.healthy }), "num"),
      cell(service.instances, "num"));
    row.tabIndex = 0;
    row.classList.toggle("selected", service.name === selectedService);
    row.addEventListener("click", () => selectService(service.name));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") selectService(service.name);
    });
    return row;
  });
  fillTable(document.getElementById("services"), rows, document.getElementById("services-empty"));
  if (selectedService === null && body.services.length > 0) selectService(body.services[0].name);
}

function statusBadge(instance) {
  const badge = el("span", { className: `badge status-${instance.status}`, text: instance.status });
  if (instance.critical_since_ms) {
    const gone = instance.critical_since_ms + instance.deregister_after_ms;
    badge.title = `critical since ${new Date(instance.critical_since_ms).toLocaleString()}; ` +
      `deregistered at ${new Date(gone).toLocaleString()} (deregister_after ${instance.deregister_after})`;
  }
  return badge;
}

/** The checks of an instance, one line each: name, status and the last output. */
function checksText(instance) {
  return (instance.checks || [])
    .map((check) => `${check.name} (${check.kind} ${check.target}): ${check.status}: ${check.output}` +
      (check.owner ? ` [server ${check.owner}]` : ""))
    .join("\n");
}

function leaseCell(instance) {
  const checks = checksText(instance);
  if (instance.lease === undefined || instance.lease === null) {
    const failing = (instance.checks || []).filter((c) => c.status !== "passing").length;
    const text = `${(instance.checks || []).length} checks` + (failing ? `, ${failing} failing` : "");
    return cell(el("span", { className: failing ? "muted" : "", text, title: checks }));
  }
  const lease = (instance.own_lease ? "its own lease" : `shared lease ${instance.lease}`) +
    (checks ? `\n${checks}` : "");
  if (instance.ttl_ms === 0) {
    return cell(el("span", { className: "muted", text: "ended", title: lease }));
  }
  return cell(el("span", { text: instance.ttl, title: lease }));
}

function renderInstances(body) {
  const rows = body.instances.map((instance) => el("tr",
    { data: { instance: instance.id, status: instance.status } },
    cell(el("span", { className: "mono", text: instance.id })),
    cell(el("span", { className: "mono", text: `${instance.address}:${instance.port}` })),
    cell(statusBadge(instance)),
    cell(instance.zone === null || instance.zone === undefined ? none() : instance.zone),
    cell(instance.region === null || instance.region === undefined ? none() : instance.region),
    cell(chips(instance.tags)),
    cell(chips(Object.entries(instance.meta).map(([key, value]) => `${key}=${value}`), "chip meta")),
    cell(instance.weight, "num"),
    leaseCell(instance)));
  const empty = document.getElementById("instances-empty");
  empty.textContent = `${body.service} has no registered instance.`;
  fillTable(document.getElementById("instances"), rows, empty);
}

/** Names of the requests waiting in line, in the order they will be served. */
function waiting(waiters) {
  if (waiters.length === 0) return none();
  const box = el("span", { className: "waiters" },
    el("span", { className: "count", text: waiters.length }), " ");
  box.append(chips(waiters.map((w) => w.holder || "(anonymous)")));
  return box;
}

function renderLocks(body) {
  const rows = body.locks.map((lock) => {
    const holder = lock.holder;
    let who;
    if (holder) who = el("span", { className: "holder", text: holder.holder || "(anonymous)" });
    else if (lock.delay_until_ms) {
      who = el("span", {
        className: "muted",
        text: "free, in lock-delay",
        title: `not granted before ${new Date(lock.delay_until_ms).toLocaleString()}`,
      });
    } else who = el("span", { className: "muted", text: "free" });
    let tokenText = none();
    if (holder && holder.token !== undefined && holder.token !== null) tokenText = String(holder.token);
    else if (holder) tokenText = el("span", { className: "muted", text: "hidden", title: "needs lock:write" });
    return el("tr", { data: { lock: lock.name } },
      cell(lock.name),
      cell(who),
      cell(tokenText, "num token"),
      cell(holder ? age(holder.granted_at_ms) : none()),
      cell(waiting(lock.waiters)));
  });
  fillTable(document.getElementById("locks"), rows, document.getElementById("locks-empty"));
}

function renderElections(body) {
  const rows = body.elections.map((election) => {
    const leader = election.leader;
    return el("tr", { data: { election: election.name } },
      cell(election.name),
      cell(leader ? el("span", { className: "holder mono", text: leader.candidate }) : el("span", { className: "muted", text: "no leader" })),
      cell(leader ? leader.token : none(), "num token"),
      cell(leader ? age(leader.since_ms) : none()),
      cell(waiting(election.candidates)));
  });
  fillTable(document.getElementById("elections"), rows, document.getElementById("elections-empty"));
}

/** Expiry storm protection as the leader reports it (absent when a follower answers). */
function stormText(storm) {
  if (!storm) return el("span", { className: "muted", text: "unknown (only the leader knows)" });
  if (storm.enabled === false) {
    return el("span", { className: "muted", text: "off (--no-expiry-storm-protection)" });
  }
  if (storm.active_services.length === 0) {
    return el("span", {
      className: "good",
      text: `inactive · ${storm.deferred_total} held back`,
      title: "expiries held back since this leader started",
    });
  }
  return el("span", { className: "storm" },
    el("span", { className: "badge status-critical", text: "active" }), " ",
    chips(storm.active_services), ` · ${storm.deferred_total} held back`);
}

function renderCluster(body) {
  const leader = body.leader === null || body.leader === undefined
    ? el("span", { className: "bad", text: "none known" })
    : `node ${body.leader}${body.leader_addr ? ` (${body.leader_addr})` : ""}`;
  // [key (data-fact), label, value]
  const facts = [
    ["answering", "Answered by", `node ${body.node_id} (${body.role})`],
    ["leader", "Leader", leader],
    ["term", "Term", body.term],
    ["indexes", "Indexes", `log ${body.last_log_index} · commit ${body.commit_index} · applied ${body.applied_index}`],
    ["snapshot", "Snapshot", body.snapshot_index === null || body.snapshot_index === undefined ? "none yet" : `at index ${body.snapshot_index}`],
    ["storm", "Storm protection", stormText(body.expiry_storm)],
  ];
  document.getElementById("cluster-facts").replaceChildren(...facts.flatMap(([key, label, value]) => [
    el("dt", { text: label }),
    el("dd", { data: { fact: key } }, value instanceof Node ? value : String(value)),
  ]));
  const rows = body.members.map((member) => {
    const row = el("tr", { data: { member: member.id } },
      cell(member.id, "num"),
      cell(el("span", { className: "mono", text: member.addr })),
      cell(el("span", {},
        el("span", { className: `badge role-${member.role}`, text: member.role }),
        el("span", { className: "vote muted", text: member.voter ? "voter" : "learner" }))));
    if (member.id === body.node_id) {
      row.classList.add("answering");
      row.title = "the node that answered";
    }
    return row;
  });
  fillTable(document.getElementById("members"), rows, null);
  document.getElementById("summary").replaceChildren(
    el("span", { text: `node ${body.node_id}` }),
    el("span", { className: `badge role-${body.role}`, text: body.role }),
    el("span", { text: `term ${body.term}` }),
    el("span", { text: `applied ${body.applied_index}` }));
}

// ------------------------------------------------------------------------------------
// Token prompt and page errors
// ------------------------------------------------------------------------------------

/** Shows the token field with the server's reason for refusing. */
function askForToken(error) {
  const panel = document.getElementById("token-panel");
  // Without a token every view is refused alike; with one, the refusals say what it lacks.
  const reason = token.get()
    ? `The token in use was refused (${error.status}): ${error.message}`
    : "ACLs are on: calls without a token are refused (401).";
  document.getElementById("token-reason").textContent = reason;
  if (panel.hidden) {
    panel.hidden = false;
    document.getElementById("token-input").focus();
  }
}

function useToken(event) {
  event.preventDefault();
  const input = document.getElementById("token-input");
  const secret = input.value.trim();
  if (secret === "") {
    document.getElementById("token-reason").textContent = "Enter a token secret.";
    return;
  }
  token.set(secret);
  input.value = "";
  document.getElementById("token-panel").hidden = true;
  restartAll();
}

function forgetToken() {
  token.forget();
  restartAll();
}

function showTokenState() {
  const has = token.get() !== "";
  document.getElementById("token-state").textContent = has ? "using a token" : "";
  document.getElementById("token-forget").hidden = !has;
}

/** A failure of the page itself (not of a call), shown at the top of the page. */
function showPageError(error) {
  const banner = document.getElementById("page-error");
  banner.textContent = `The dashboard failed: ${error && error.message ? error.message : error}`;
  banner.hidden = false;
}

// ------------------------------------------------------------------------------------
// Start-up
// ------------------------------------------------------------------------------------

const views = {
  services: new LiveView("services", () => "/v1/services", renderServices, true),
  instances: new LiveView("instances",
    () => (selectedService === null ? null : `/v1/services/${encodeURIComponent(selectedService)}?status=any`),
    renderInstances, true),
  locks: new LiveView("locks", () => "/v1/locks", renderLocks, true),
  elections: new LiveView("elections", () => "/v1/elections", renderElections, true),
  cluster: new LiveView("cluster", () => "/v1/cluster", renderCluster, false),
};

/** Starts every view over (after the token changed: what is visible may have too). */
function restartAll() {
  showTokenState();
  for (const view of Object.values(views)) view.start();
}

function main() {
  window.addEventListener("error", (event) => showPageError(event.error || event.message));
  window.addEventListener("unhandledrejection", (event) => showPageError(event.reason));
  document.getElementById("token-form").addEventListener("submit", useToken);
  document.getElementById("token-forget").addEventListener("click", forgetToken);
  window.addEventListener("hashchange", () => {
    const name = serviceFromHash();
    if (name !== null) selectService(name);
  });
  const fromHash = serviceFromHash();
  if (fromHash !== null) markSelected(fromHash);
  restartAll();
  setInterval(tickAges, AGE_TICK_MS);
}

main();
