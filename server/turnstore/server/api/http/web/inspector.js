// The turnstore web inspector: threads (searched by id prefix, paged without
// limit, kept current by polling the threads written since the last look),
// a thread's turns followed live over Server-Sent Events, and conversation
// keys with their versions. Plain DOM, no build step. Event content is only
// ever put into the page as text (textContent), never as HTML.
"use strict";

const HEADER_KEYS = new Set(["position", "turn", "event_id", "sequence", "timestamp", "type"]);
const CHANGES_EVERY_MS = 3000;
const PAGE = 100;
// The most the recent list shows (the daemon's largest page); past it, search or A-Z.
const MAX_RECENT = 1000;
// Finished turns beyond this many are shown collapsed once the page catches up.
const OPEN_TURNS = 5;
// How close to the bottom (px) still counts as "at the live end" for follow-scroll.
const NEAR_BOTTOM = 48;

const $ = (id) => document.getElementById(id);
let source = null; // the EventSource of the selected thread
let selected = null; // its thread id
let changesTimer = null;
let scope = null; // the session's scope (null: everything)
const list = { order: "recent", prefix: "", nextAfter: null, recent: PAGE, newest: 0n, ids: new Map(), generation: 0 };
const keys = { prefix: "", nextAfter: null, generation: 0, selected: null };
let view = null; // state of the followed thread (see follow)

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const plural = (count, one, many) => `${count} ${String(count) === "1" ? one : many}`;

// JSON.parse, except that integers beyond Number.MAX_SAFE_INTEGER stay exact,
// as decimal strings: turn numbers (and positions) are 64-bit, and plain
// JSON.parse rounds both 2^64-1 and 2^64-2 to 2^64. The daemon sends them as
// JSON numbers; this walks the text once, skipping strings, and quotes each
// unsafe integer before parsing. Such a number in an event's body therefore
// shows as an exact, quoted string rather than a rounded number.
function parseExact(text) {
  let quoted = "";
  let copied = 0;
  let at = 0;
  while (at < text.length) {
    const code = text.charCodeAt(at);
    if (code === 34) {
      // a string: skip to its closing quote, over escapes
      at += 1;
      while (at < text.length && text.charCodeAt(at) !== 34) at += text.charCodeAt(at) === 92 ? 2 : 1;
      at += 1;
    } else if (code === 45 || (code >= 48 && code <= 57)) {
      const start = at;
      at += 1;
      while (at < text.length && /[0-9.eE+-]/.test(text[at])) at += 1;
      const token = text.slice(start, at);
      if (/^-?[0-9]+$/.test(token) && !Number.isSafeInteger(Number(token))) {
        quoted += text.slice(copied, start) + '"' + token + '"';
        copied = at;
      }
    } else {
      at += 1;
    }
  }
  return JSON.parse(copied ? quoted + text.slice(copied) : text);
}

function setStatus(node, text, kind) {
  node.textContent = text;
  node.className = "status" + (kind ? " " + kind : "");
}

function nanosText(nanos) {
  // Unix nanoseconds (maybe an exact string) as a local date and time.
  return new Date(Number(BigInt(nanos) / 1000000n)).toLocaleString();
}

// GET a JSON answer; null (after showing why) when it failed.
async function getJson(url) {
  let answer;
  try {
    answer = await fetch(url);
  } catch (error) {
    setStatus($("connection"), "daemon unreachable", "error");
    return null;
  }
  if (answer.status === 401) {
    showLogin("Your session ended; sign in again.");
    return null;
  }
  const body = parseExact(await answer.text());
  if (!answer.ok && answer.status !== 404) {
    setStatus($("connection"), `error ${answer.status}: ${body.message || body.error || ""}`, "error");
    return null;
  }
  setStatus($("connection"), "connected", "live");
  return { status: answer.status, body };
}

// -- access ---------------------------------------------------------------

async function boot() {
  const state = await (await fetch("/v1/session")).json();
  if (state.auth && !state.authenticated) showLogin();
  else showApp(state);
}

function showLogin(message) {
  stopFollowing();
  clearInterval(changesTimer);
  $("app").hidden = true;
  $("tabs").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus($("connection"), "signed out", "error");
  $("token").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  const answer = await fetch("/v1/session", {
    method: "POST",
    headers: { Authorization: "Bearer " + token },
  });
  $("token").value = "";
  if (!answer.ok) {
    $("login-error").textContent = "The daemon refused this token.";
    return;
  }
  showApp(await answer.json());
});

function showApp(state) {
  scope = state && state.scope ? state.scope : null;
  $("login").hidden = true;
  $("app").hidden = false;
  $("tabs").hidden = false;
  setStatus($("connection"), "connected", "live");
  listThreads();
  clearInterval(changesTimer);
  changesTimer = setInterval(pollChanges, CHANGES_EVERY_MS);
  route();
}

// Whether the session's scope covers a thread id (null scope: all of them).
// A scope naming none of its four fields covers everything (scopes.py).
function scopeCovers(threadId) {
  if (!scope || !["thread_prefix", "threads", "key_prefix", "keys"].some((field) => field in scope)) return true;
  const prefix = scope.thread_prefix;
  if (typeof prefix === "string" && threadId.startsWith(prefix)) return true;
  return Array.isArray(scope.threads) && scope.threads.includes(threadId);
}

function scopeText() {
  const parts = [];
  if (typeof scope.thread_prefix === "string") parts.push(`threads starting with "${scope.thread_prefix}"`);
  if (Array.isArray(scope.threads) && scope.threads.length) parts.push(plural(scope.threads.length, "listed thread", "listed threads"));
  return parts.length ? parts.join(" and ") : "no threads";
}

// -- where the page is: #thread=ID, #key=K[&version=N], #conversations ----

function hashParams() {
  const params = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const at = part.indexOf("=");
    if (at > 0) params[part.slice(0, at)] = decodeURIComponent(part.slice(at + 1));
    else if (part) params[part] = "";
  }
  return params;
}

function route() {
  const params = hashParams();
  const conversations = "key" in params || "conversations" in params;
  $("thread-list").hidden = conversations;
  $("key-list").hidden = !conversations;
  $("thread").hidden = conversations;
  $("conversation").hidden = !conversations;
  $("tab-threads").classList.toggle("active", !conversations);
  $("tab-conversations").classList.toggle("active", conversations);
  if (conversations) {
    if (selected !== null) $("tab-threads").href = "#thread=" + encodeURIComponent(selected);
    stopFollowing();
    selected = null;
    if (!$("keys").children.length && !keys.loading) listKeys();
    if ("key" in params) showKey(params.key, params.version || null);
    return;
  }
  if ("thread" in params && params.thread !== selected) follow(params.thread);
  else if (!("thread" in params) && selected === null) {
    $("empty").hidden = false;
    $("thread-head").hidden = true;
    $("turns").replaceChildren();
    threadState(null);
  }
}

window.addEventListener("hashchange", route);

// -- the thread list ------------------------------------------------------

// The list afresh: most recent first, or (searching, or A-Z) in id order, a page at a time.
// The recent list has no cursor (the order changes under it): its "more" asks
// for a longer list, up to MAX_RECENT; the id order pages with `after`, without limit.
async function listThreads() {
  list.generation += 1;
  const generation = list.generation;
  list.prefix = $("search").value;
  list.order = list.prefix ? "id" : $("order").value;
  list.ids = new Map();
  list.nextAfter = null;
  list.recent = PAGE;
  $("threads").replaceChildren();
  await loadThreads(generation, "");
}

async function loadThreads(generation, after) {
  const url =
    list.order === "recent"
      ? `/v1/threads?order=recent&limit=${list.recent}`
      : `/v1/threads?prefix=${encodeURIComponent(list.prefix)}&after=${encodeURIComponent(after)}&limit=${PAGE}`;
  const answer = await getJson(url);
  if (!answer || generation !== list.generation) return;
  const { threads, next_after: nextAfter } = answer.body;
  for (const thread of threads) upsertThread(thread, false);
  if (list.order === "recent") {
    list.nextAfter = threads.length === list.recent && list.recent < MAX_RECENT ? "" : null;
  } else {
    list.nextAfter = nextAfter;
  }
  $("more").hidden = list.nextAfter === null || list.nextAfter === undefined;
  listHint();
}

function listHint() {
  const shown = list.ids.size;
  let text;
  if (list.order === "recent") {
    text = shown >= PAGE
      ? `the ${shown} most recently written; ` +
        (list.nextAfter !== null ? "more below, or " : "") +
        "search by id or sort A–Z to reach every thread"
      : `${plural(shown, "thread", "threads")}, most recently written first`;
  } else {
    const what = list.prefix ? `starting with “${list.prefix}”` : "in id order";
    text = `${plural(shown, "thread", "threads")} ${what}` + (list.nextAfter ? ", more below" : "");
    if (!shown && list.prefix) text = `no thread starts with “${list.prefix}”`;
  }
  $("list-hint").textContent = text;
}

// Add or update one thread's entry; `fresh` (a change) moves it to the top in recent order.
function upsertThread(thread, fresh) {
  const id = String(thread.thread_id);
  const nanos = BigInt(thread.last_write_unix_nanos);
  if (nanos > list.newest) list.newest = nanos;
  let item = list.ids.get(id);
  if (!item) {
    item = el("li");
    item.dataset.threadId = id;
    item.append(el("span", "id", id), el("span", "meta"));
    item.addEventListener("click", () => {
      location.hash = "thread=" + encodeURIComponent(id);
    });
    list.ids.set(id, item);
    if (fresh && list.order === "recent") $("threads").prepend(item);
    else if (fresh) insertInIdOrder(item, id);
    else $("threads").append(item);
  } else if (fresh && list.order === "recent") {
    $("threads").prepend(item);
  }
  item.classList.toggle("selected", id === selected);
  item.querySelector(".meta").textContent =
    `${plural(thread.event_count, "event", "events")} · ${plural(thread.finished_turns, "finished turn", "finished turns")} · ${nanosText(thread.last_write_unix_nanos)}`;
}

function insertInIdOrder(item, id) {
  const later = [...$("threads").children].find((other) => other.dataset.threadId > id);
  $("threads").insertBefore(item, later || null);
}

// Threads written since the newest write seen: what changed, never the whole list.
async function pollChanges() {
  if (document.hidden || $("app").hidden) return;
  const generation = list.generation;
  const answer = await getJson(`/v1/threads?changed_since=${list.newest}&limit=${PAGE}`);
  if (!answer || generation !== list.generation) return;
  for (const thread of answer.body.threads) {
    const nanos = BigInt(thread.last_write_unix_nanos);
    if (nanos > list.newest) list.newest = nanos;
  }
  // More changed than one answer holds (or the page had seen no write yet): list afresh.
  if (answer.body.truncated) return listThreads();
  const changed = answer.body.threads.slice().reverse(); // oldest first, so the newest ends on top
  for (const thread of changed) {
    const id = String(thread.thread_id);
    if (list.ids.has(id) || list.order === "recent") upsertThread(thread, true);
    else if (id.startsWith(list.prefix) && (list.nextAfter === null || id < list.nextAfter)) upsertThread(thread, true);
  }
  listHint();
}

$("more").addEventListener("click", () => {
  if (list.nextAfter === null) return;
  if (list.order === "recent") list.recent = Math.min(list.recent + PAGE, MAX_RECENT);
  loadThreads(list.generation, list.nextAfter);
});
$("refresh").addEventListener("click", listThreads);
let searchTimer = null;
$("order").addEventListener("change", () => {
  clearTimeout(searchTimer); // a search typed just before is listed now, once
  listThreads();
});
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(listThreads, 200);
});

// -- following a thread ---------------------------------------------------

function stopFollowing() {
  if (source) source.close();
  source = null;
}

function threadState(text, kind) {
  const node = $("thread-state");
  node.hidden = text === null;
  node.textContent = text || "";
  node.className = "state" + (kind ? " " + kind : "");
}

// Follow a thread from its first event. After a dropped connection the
// browser reconnects by itself with Last-Event-ID, so nothing is shown twice;
// after a reload the page starts over from the durable log. `cleared` says
// the thread was just cleared under the page.
function follow(threadId, cleared) {
  stopFollowing();
  selected = threadId;
  for (const item of $("threads").children) item.classList.toggle("selected", item.dataset.threadId === threadId);
  $("tab-threads").href = "#thread=" + encodeURIComponent(threadId);
  $("empty").hidden = true;
  $("thread-head").hidden = false;
  $("thread-title").textContent = threadId;
  $("turns").replaceChildren();
  const filter = $("type-filter");
  filter.replaceChildren(filter.options[0]);
  filter.value = "";
  view = { types: new Map(), tools: new Map(), caughtUp: false, cleared: Boolean(cleared), events: 0 };
  threadState(null);
  if (!scopeCovers(threadId)) {
    threadState(
      `Forbidden: this session's scope covers ${scopeText()}, not this thread. ` +
        "It reads as an empty thread whether or not it exists.",
      "forbidden",
    );
  } else if (cleared) {
    threadState("This thread was cleared: it holds no events now. New events will show here.", "cleared");
  }
  const stream = new EventSource("/v1/threads/" + encodeURIComponent(threadId) + "/events");
  source = stream;
  const state = $("stream-state");
  setStatus(state, "connecting");
  stream.onopen = () => setStatus(state, "catching up");
  stream.onmessage = (event) => showEvent(parseExact(event.data));
  stream.addEventListener("turn_finished", (event) => finishTurn(parseExact(event.data)));
  stream.addEventListener("caught_up", (event) => caughtUp(parseExact(event.data)));
  stream.addEventListener("thread_cleared", () => {
    $("turns").append(el("p", "notice", "The thread was cleared; showing its new life."));
  });
  stream.addEventListener("end", (event) => {
    stream.close();
    const { reason } = JSON.parse(event.data);
    // A new life of the thread, or a cursor it never handed out (the daemon's
    // database was replaced under a reconnect): read the thread afresh.
    const afresh = reason === "thread_cleared" || reason === "cursor_out_of_range";
    if (reason === "thread_cleared") {
      const item = list.ids.get(threadId);
      if (item) item.querySelector(".meta").textContent = "cleared: holds no events now";
    }
    if (afresh && selected === threadId) follow(threadId, reason === "thread_cleared");
    else if (stream === source) setStatus(state, "ended");
  });
  stream.onerror = async () => {
    if (stream !== source) return;
    if (stream.readyState === EventSource.CLOSED) {
      setStatus(state, "closed", "error");
      const check = await fetch("/v1/session").then((r) => r.json(), () => null);
      if (check && check.auth && !check.authenticated) showLogin("Your session ended; sign in again.");
    } else {
      setStatus(state, "reconnecting", "error");
    }
  };
}

function caughtUp(marker) {
  const state = $("stream-state");
  const empty = view.events === 0;
  if (!empty) setStatus(state, "live", "live");
  else setStatus(state, "waiting for events");
  if (!view.caughtUp) {
    view.caughtUp = true;
    collapseOld();
    scrollToLive(true);
  }
  if (!empty || !$("thread-state").hidden) return;
  if (String(marker.epoch) === "0") {
    threadState(
      "Unknown thread: nothing is stored under this id. It was never written, or it was " +
        "cleared before this page opened it. Events written to it will show here.",
      "unknown",
    );
  } else {
    const finished = $("turns").querySelectorAll(".turn").length;
    threadState(
      `Empty thread: it holds no events${finished ? ` (${plural(finished, "empty finished turn", "empty finished turns")})` : ""}.`,
      "empty",
    );
  }
}

// A turn's card; `turn` is a number or, beyond 2^53, an exact decimal string
// (parseExact), so cards are found by the text and ordered as BigInts.
function turnNode(turn) {
  const turns = $("turns");
  let node = turns.querySelector(`.turn[data-turn="${turn}"]`);
  if (node) return node;
  node = el("details", "turn live");
  node.open = true;
  node.dataset.turn = String(turn);
  const summary = el("summary");
  const head = el("h3");
  head.append(el("span", "label", `Turn ${turn}`), el("span", "badge", "being written"));
  summary.append(head);
  node.append(summary, el("div", "body"));
  // Turns may interleave: keep them in turn order.
  const exact = BigInt(turn);
  const later = [...turns.querySelectorAll(".turn")].find((other) => BigInt(other.dataset.turn) > exact);
  turns.insertBefore(node, later || null);
  return node;
}

function finishTurn(marker) {
  const node = turnNode(marker.turn);
  node.classList.remove("live");
  node.querySelector(".badge").textContent = `finished · ${plural(marker.event_count, "event", "events")}`;
}

function collapseOld() {
  const finished = [...$("turns").querySelectorAll(".turn:not(.live)")];
  if ($("turns").querySelectorAll(".turn").length <= OPEN_TURNS) return;
  for (const node of finished.slice(0, -2)) node.open = false;
}

$("collapse-all").addEventListener("click", () => {
  for (const node of $("turns").querySelectorAll(".turn:not(.live)")) node.open = false;
});
$("expand-all").addEventListener("click", () => {
  for (const node of $("turns").querySelectorAll(".turn")) node.open = true;
});

function fields(event) {
  const out = {};
  for (const [key, value] of Object.entries(event)) if (!HEADER_KEYS.has(key)) out[key] = value;
  return out;
}

// -- one event's place on the page ----------------------------------------

// An item (a text, a tool card, an event) keeps the first and last of the
// events it shows (not all: a long text has thousands), so their positions,
// times and ids can be shown on demand.
function newItem(body, className, types) {
  const item = el("div", "item " + className);
  item.dataset.types = "";
  const info = el("button", "info", "i");
  info.type = "button";
  info.title = "positions, times and ids";
  info.addEventListener("click", () => item.classList.toggle("open-meta"));
  item.append(info);
  item.metaLine = el("div", "meta-line");
  item.first = null;
  item.last = null;
  item.count = 0;
  for (const type of types) addType(item, type);
  body.append(item);
  return item;
}

function addType(item, type) {
  const types = new Set(item.dataset.types.split(" ").filter(Boolean));
  types.add(type);
  item.dataset.types = [...types].join(" ");
  applyFilter(item);
}

function note(item, event) {
  const header = (({ position, timestamp, event_id: id, sequence }) => ({ position, timestamp, id, sequence }))(event);
  if (item.first === null) item.first = header;
  item.last = header;
  item.count += 1;
  const { first, last } = item;
  item.metaLine.textContent = item.count === 1
    ? `position ${first.position} · ${first.timestamp} · id ${first.id} · seq ${first.sequence}`
    : `positions ${first.position}–${last.position} (${plural(item.count, "event", "events")}) · ` +
      `${first.timestamp} → ${last.timestamp} · ids ${first.id} … ${last.id}`;
  item.append(item.metaLine); // (re)placed last
  countType(String(event.type));
}

function countType(type) {
  const count = (view.types.get(type) || 0) + 1;
  view.types.set(type, count);
  const filter = $("type-filter");
  let option = [...filter.options].find((o) => o.value === type);
  if (!option) {
    option = el("option");
    option.value = type;
    filter.append(option);
  }
  option.textContent = `${type} (${count})`;
}

function applyFilter(item) {
  const wanted = $("type-filter").value;
  item.classList.toggle("filtered", wanted !== "" && !item.dataset.types.split(" ").includes(wanted));
}

$("type-filter").addEventListener("change", () => {
  for (const item of $("turns").querySelectorAll(".item")) applyFilter(item);
});
$("show-details").addEventListener("change", (event) => {
  $("turns").classList.toggle("details", event.target.checked);
  scrollToLive(false);
});

const TOOL = /^(tool|function)_/;
const RESULT = /result|output|response/;

function callId(event) {
  for (const key of ["tool_call_id", "call_id", "tool_use_id", "id"]) {
    if (typeof event[key] === "string" || typeof event[key] === "number") return String(event[key]);
  }
  return null;
}

function failed(event, type) {
  return (
    event.is_error === true ||
    (event.error !== undefined && event.error !== null && event.error !== false) ||
    event.status === "error" ||
    /error|fail/.test(type)
  );
}

// The words a user message or a reasoning event carries, or null.
function words(event) {
  for (const key of ["delta", "text", "content", "message"]) {
    const value = event[key];
    if (typeof value === "string") return value;
    if (Array.isArray(value) && value.every((part) => part && typeof part.text === "string")) {
      return value.map((part) => part.text).join("");
    }
  }
  return null;
}

// Text joined across deltas of one message into one item of `className`.
function joined(body, className, kind, event) {
  const message = String(event.message_id ?? event.id ?? "");
  const type = String(event.type);
  let item = [...body.querySelectorAll(`.item.${className}`)].find((node) => node.dataset.message === message);
  if (!item) {
    item = newItem(body, className, [type]);
    item.dataset.message = message;
    if (kind) item.append(el("span", "kind", kind));
    item.textNode = el("div", className === "prose" ? "text" : "said");
    item.textNode.dataset.message = message;
    item.append(item.textNode);
  } else {
    addType(item, type);
  }
  return item;
}

function showEvent(event) {
  view.events += 1;
  if (!$("thread-state").hidden && !$("thread-state").classList.contains("forbidden")) threadState(null);
  if ($("stream-state").textContent === "waiting for events") setStatus($("stream-state"), "live", "live");
  const body = turnNode(event.turn).querySelector(".body");
  const type = String(event.type);
  if (typeof event.delta === "string" && type.endsWith("text_delta") && !/reason|think/.test(type)) {
    const item = joined(body, "prose", null, event);
    item.textNode.append(document.createTextNode(event.delta));
    note(item, event);
  } else if (/reason|think/.test(type) && words(event) !== null) {
    const item = joined(body, "reasoning", "reasoning", event);
    item.textNode.append(document.createTextNode(words(event)));
    note(item, event);
  } else if ((/^user/.test(type) || event.role === "user") && words(event) !== null) {
    const item = newItem(body, "user", [type]);
    item.append(el("span", "kind", "user"), el("div", "said", words(event)));
    note(item, event);
  } else if (TOOL.test(type)) {
    showTool(body, type, event);
  } else {
    const item = newItem(body, "event", [type]);
    if (failed(event, type)) item.classList.add("failed");
    item.append(el("span", "kind", type), el("pre", null, JSON.stringify(fields(event))));
    item.dataset.position = String(event.position);
    note(item, event);
  }
  // Follow is on while the view is at the live end (the scroll handler keeps
  // it so); no layout is read per event, which would cost seconds on a long thread.
  if (view.caughtUp && $("follow-scroll").checked) scheduleScroll();
}

// One scroll per frame, however many events arrived in it.
let scrollPending = false;
function scheduleScroll() {
  if (scrollPending) return;
  scrollPending = true;
  requestAnimationFrame(() => {
    scrollPending = false;
    scrollToLive(false);
  });
}

// A tool call and its result (matched by call id) in one card; a result
// that failed marks the card.
function showTool(body, type, event) {
  const id = callId(event);
  const key = id === null ? null : `${event.turn}/${id}`;
  const isResult = RESULT.test(type);
  let card = key !== null ? view.tools.get(key) : undefined;
  if (!card || (!isResult && card.hasCall && !/delta|end|stop|progress/.test(type))) {
    card = newItem(body, "tool", [type]);
    card.dataset.position = String(event.position);
    if (id !== null) card.dataset.callId = id;
    if (key !== null) view.tools.set(key, card);
  } else {
    addType(card, type);
  }
  const name = event.name ?? event.tool_name ?? event.tool ?? "";
  if (isResult) {
    const result = el("div", "result");
    const bad = failed(event, type);
    result.append(el("span", "kind", bad ? `${type} · error` : type), el("pre", null, JSON.stringify(fields(event), null, 2)));
    if (bad) {
      result.classList.add("failed");
      card.classList.add("failed");
    }
    card.querySelector(".pending")?.remove();
    card.append(result);
  } else {
    if (!card.hasCall) {
      card.hasCall = true;
      card.append(el("span", "name", `${type}${name ? ": " + name : ""}`));
      card.append(el("pre", null, JSON.stringify(fields(event), null, 2)));
      if (id !== null) card.append(el("div", "pending", "no result yet"));
    } else {
      const more = el("pre", null, `${type} ${JSON.stringify(fields(event))}`);
      const pending = card.querySelector(".pending");
      card.insertBefore(more, pending || null);
      if (failed(event, type)) card.classList.add("failed");
    }
  }
  note(card, event);
}

// -- follow-scroll and jump to live ----------------------------------------

function isNearBottom() {
  const pane = scroller();
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < NEAR_BOTTOM;
}

function scroller() {
  return $("thread");
}

function scrollToLive(force) {
  if (!force && !$("follow-scroll").checked) return;
  const pane = scroller();
  pane.scrollTop = pane.scrollHeight;
  $("jump-live").hidden = true;
}

// Scrolling up stops following; coming back to the live end resumes it. Only
// an upward move counts: the browser's scroll anchoring moves the pane down
// when content grows above the view, which is no reason to stop.
let lastScrollTop = 0;
$("thread").addEventListener("scroll", () => {
  const pane = scroller();
  const up = pane.scrollTop < lastScrollTop - 2;
  lastScrollTop = pane.scrollTop;
  if (!view || !view.caughtUp) return;
  const away = !isNearBottom();
  $("jump-live").hidden = !away;
  if (away && up) $("follow-scroll").checked = false;
  if (!away) $("follow-scroll").checked = true;
});
$("jump-live").addEventListener("click", () => {
  $("follow-scroll").checked = true;
  const live = [...$("turns").querySelectorAll(".turn.live")].pop();
  if (live) live.open = true;
  scrollToLive(true);
});
$("follow-scroll").addEventListener("change", (event) => {
  if (event.target.checked) scrollToLive(true);
});

// -- conversations ----------------------------------------------------------

async function listKeys() {
  keys.generation += 1;
  keys.prefix = $("key-search").value;
  keys.nextAfter = null;
  $("keys").replaceChildren();
  await loadKeys(keys.generation, "");
}

async function loadKeys(generation, after) {
  keys.loading = true;
  const answer = await getJson(
    `/v1/conversations?prefix=${encodeURIComponent(keys.prefix)}&after=${encodeURIComponent(after)}&limit=${PAGE}`,
  );
  keys.loading = false;
  if (!answer || generation !== keys.generation) return;
  for (const entry of answer.body.conversations) {
    const key = String(entry.key);
    const item = el("li");
    item.dataset.key = key;
    item.classList.toggle("selected", key === keys.selected);
    item.append(
      el("span", "id", key),
      el("span", "meta", `version ${entry.current_version} · ${nanosText(entry.last_write_unix_nanos)}`),
    );
    item.addEventListener("click", () => {
      location.hash = "key=" + encodeURIComponent(key);
    });
    $("keys").append(item);
  }
  keys.nextAfter = answer.body.next_after;
  $("more-keys").hidden = keys.nextAfter === null;
  const shown = $("keys").children.length;
  $("key-hint").textContent = shown
    ? `${plural(shown, "conversation", "conversations")}${keys.prefix ? ` starting with “${keys.prefix}”` : ""}, in key order`
    : keys.prefix
      ? `no conversation key starts with “${keys.prefix}”`
      : "no conversation holds a snapshot (or none within this session's scope)";
}

$("more-keys").addEventListener("click", () => {
  if (keys.nextAfter !== null) loadKeys(keys.generation, keys.nextAfter);
});
let keySearchTimer = null;
$("key-search").addEventListener("input", () => {
  clearTimeout(keySearchTimer);
  keySearchTimer = setTimeout(listKeys, 200);
});

async function showKey(key, version) {
  keys.selected = key;
  for (const item of $("keys").children) item.classList.toggle("selected", item.dataset.key === key);
  $("conv-empty").hidden = true;
  $("conv-head").hidden = false;
  $("conv-title").textContent = key;
  const state = $("conv-state");
  const answer = await getJson("/v1/versions/" + encodeURIComponent(key));
  if (!answer || keys.selected !== key) return;
  const rows = $("versions").tBodies[0];
  rows.replaceChildren();
  if (answer.status === 404) {
    state.hidden = false;
    state.textContent =
      "Unknown conversation: no snapshot is stored under this key (or it is outside this session's scope).";
    $("versions").hidden = $("raw").hidden = $("messages").hidden = $("snapshot-title").hidden = true;
    return;
  }
  state.hidden = true;
  $("versions").hidden = false;
  const versions = answer.body.versions;
  const shown = version !== null ? String(version) : String(versions[0].version);
  for (const entry of versions) {
    const row = el("tr", "version");
    row.dataset.version = String(entry.version);
    row.classList.toggle("selected", String(entry.version) === shown);
    row.append(
      el("td", null, String(entry.version)),
      el("td", null, nanosText(entry.saved_at_unix_nanos)),
      el("td", null, plural(entry.size_bytes, "byte", "bytes")),
      el("td", null, String(entry.content_type)),
    );
    row.addEventListener("click", () => {
      location.hash = `key=${encodeURIComponent(key)}&version=${entry.version}`;
    });
    rows.append(row);
  }
  const snapshot = await getJson(`/v1/conversations/${encodeURIComponent(key)}?version=${shown}`);
  if (!snapshot || keys.selected !== key) return;
  $("snapshot-title").hidden = false;
  $("raw").hidden = false;
  $("messages").replaceChildren();
  $("messages").hidden = true;
  if (snapshot.status === 404) {
    $("snapshot-title").textContent = `Version ${shown}`;
    $("snapshot").textContent = "This version is no longer kept.";
    $("raw").open = true;
    return;
  }
  const content = snapshot.body.snapshot;
  const messages = content && Array.isArray(content.messages) ? content.messages : null;
  $("snapshot-title").textContent =
    `Version ${shown}` + (messages !== null ? ` · ${plural(messages.length, "message", "messages")}` : "");
  $("snapshot").textContent =
    content === null ? `${snapshot.body.body_error}\n${snapshot.body.raw_body}` : JSON.stringify(content, null, 2);
  // A conversation's messages one by one (role and words where they have
  // them, else their JSON); the stored JSON stays one click away.
  $("raw").open = messages === null;
  if (messages === null) return;
  const pinned = Array.isArray(content.pinned) ? content.pinned : [];
  for (const [index, message] of messages.entries()) {
    const entry = el("li", "message");
    const role = message && typeof message.role === "string" ? message.role : `message ${index + 1}`;
    entry.append(el("span", "kind", role + (pinned[index] === true ? " · pinned" : "")));
    const said = message && typeof message === "object" ? words(message) : null;
    entry.append(said !== null ? el("div", "said", said) : el("pre", null, JSON.stringify(message, null, 2)));
    $("messages").append(entry);
  }
  $("messages").hidden = false;
}

boot();
