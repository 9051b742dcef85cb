// The turnstore web inspector: threads, turns, and a live follow over
// Server-Sent Events. Plain DOM, no build step. Event content is only ever
// put into the page as text (textContent), never as HTML.
"use strict";

const HEADER_KEYS = new Set(["position", "turn", "event_id", "sequence", "timestamp", "type"]);
const LIST_EVERY_MS = 3000;

const $ = (id) => document.getElementById(id);
let source = null; // the EventSource of the selected thread
let selected = null; // its thread id
let listTimer = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

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

// -- access ---------------------------------------------------------------

async function boot() {
  const state = await (await fetch("/v1/session")).json();
  if (state.auth && !state.authenticated) showLogin();
  else showApp();
}

function showLogin(message) {
  stopFollowing();
  clearInterval(listTimer);
  $("app").hidden = true;
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
  showApp();
});

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  setStatus($("connection"), "connected", "live");
  listThreads();
  clearInterval(listTimer);
  listTimer = setInterval(listThreads, LIST_EVERY_MS);
  const wanted = threadFromHash();
  if (wanted !== null && wanted !== selected) follow(wanted);
}

// -- the thread list ------------------------------------------------------

async function listThreads() {
  let answer;
  try {
    answer = await fetch("/v1/threads?order=recent&limit=200");
  } catch (error) {
    setStatus($("connection"), "daemon unreachable", "error");
    return;
  }
  if (answer.status === 401) return showLogin("Your session ended; sign in again.");
  if (!answer.ok) return setStatus($("connection"), "error " + answer.status, "error");
  setStatus($("connection"), "connected", "live");
  const { threads } = await answer.json();
  const list = $("threads");
  list.replaceChildren(
    ...threads.map((thread) => {
      const item = el("li");
      item.dataset.threadId = thread.thread_id;
      if (thread.thread_id === selected) item.classList.add("selected");
      item.append(el("span", "id", thread.thread_id));
      const when = new Date(thread.last_write_unix_nanos / 1e6).toLocaleString();
      item.append(
        el("span", "meta", `${thread.event_count} events · ${thread.finished_turns} finished turns · ${when}`),
      );
      item.addEventListener("click", () => {
        location.hash = "thread=" + encodeURIComponent(thread.thread_id);
      });
      return item;
    }),
  );
}

function threadFromHash() {
  const match = /^#thread=(.*)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

window.addEventListener("hashchange", () => {
  const wanted = threadFromHash();
  if (wanted !== null && wanted !== selected) follow(wanted);
});

// -- following a thread ---------------------------------------------------

function stopFollowing() {
  if (source) source.close();
  source = null;
}

// Follow a thread from its first event. After a dropped connection the
// browser reconnects by itself with Last-Event-ID, so nothing is shown twice;
// after a reload the page starts over from the durable log.
function follow(threadId) {
  stopFollowing();
  selected = threadId;
  for (const item of $("threads").children) {
    item.classList.toggle("selected", item.dataset.threadId === threadId);
  }
  $("empty").hidden = true;
  $("thread-head").hidden = false;
  $("thread-title").textContent = threadId;
  $("turns").replaceChildren();
  const stream = new EventSource("/v1/threads/" + encodeURIComponent(threadId) + "/events");
  source = stream;
  const state = $("stream-state");
  setStatus(state, "connecting");
  stream.onopen = () => setStatus(state, "catching up", "live");
  stream.onmessage = (event) => showEvent(parseExact(event.data));
  stream.addEventListener("turn_finished", (event) => finishTurn(parseExact(event.data)));
  stream.addEventListener("caught_up", () => setStatus(state, "live", "live"));
  stream.addEventListener("thread_cleared", () => {
    $("turns").append(el("p", "notice", "The thread was cleared; showing its new life."));
  });
  stream.addEventListener("end", (event) => {
    stream.close();
    const { reason } = JSON.parse(event.data);
    // A new life of the thread, or a cursor it never handed out (the daemon's
    // database was replaced under a reconnect): read the thread afresh.
    const afresh = reason === "thread_cleared" || reason === "cursor_out_of_range";
    if (afresh && selected === threadId) follow(threadId);
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

// A turn's card; `turn` is a number or, beyond 2^53, an exact decimal string
// (parseExact), so cards are found by the text and ordered as BigInts.
function turnNode(turn) {
  const turns = $("turns");
  let node = turns.querySelector(`.turn[data-turn="${turn}"]`);
  if (node) return node;
  node = el("article", "turn live");
  node.dataset.turn = String(turn);
  const head = el("h3", null, `Turn ${turn}`);
  head.append(el("span", "badge", "being written"));
  node.append(head, el("div", "body"));
  // Turns may interleave: keep them in turn order.
  const exact = BigInt(turn);
  const later = [...turns.querySelectorAll(".turn")].find((other) => BigInt(other.dataset.turn) > exact);
  turns.insertBefore(node, later || null);
  return node;
}

function finishTurn(marker) {
  const node = turnNode(marker.turn);
  node.classList.remove("live");
  node.querySelector(".badge").textContent = `finished · ${marker.event_count} events`;
}

function fields(event) {
  const out = {};
  for (const [key, value] of Object.entries(event)) if (!HEADER_KEYS.has(key)) out[key] = value;
  return out;
}

function showEvent(event) {
  const body = turnNode(event.turn).querySelector(".body");
  const type = String(event.type);
  if (typeof event.delta === "string" && type.endsWith("text_delta")) {
    const message = String(event.message_id ?? "");
    let text = [...body.querySelectorAll(".text")].find((node) => node.dataset.message === message);
    if (!text) {
      text = el("div", "text");
      text.dataset.message = message;
      body.append(text);
    }
    text.append(document.createTextNode(event.delta));
    return;
  }
  if (type.startsWith("tool")) {
    const card = el("div", "tool");
    card.dataset.position = String(event.position);
    const name = event.name ?? event.tool_name ?? event.tool ?? "";
    card.append(el("span", "name", `${type}${name ? ": " + name : ""}`));
    card.append(el("pre", null, JSON.stringify(fields(event), null, 2)));
    body.append(card);
    return;
  }
  const other = el("pre", "event", `${type} ${JSON.stringify(fields(event))}`);
  other.dataset.position = String(event.position);
  body.append(other);
}

$("refresh").addEventListener("click", listThreads);
boot();
