// chatapp web page: plain JavaScript, no framework, no build step, nothing from another origin.
//
// REST calls carry "Authorization: Bearer <key>"; the key lives in localStorage only. The
// websocket authenticates with a one-time ticket (POST /api/v1/ws-tickets), fetched fresh for
// every (re)connect, so the key never appears in a URL. Replies stream as websocket events
// numbered by seq; each reply remembers the last seq it applied, so a reconnect (or a reload,
// which starts from the message resource's content and seq) resubscribes with after_seq and
// no text is lost or doubled.

import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "chatapp.apiKey";
const PAGE_SIZE = 20;
const LIVE = new Set(["queued", "generating"]);
const STATE_LABELS = {
  queued: "Queued",
  provider_queued: "Waiting for GPU",
  generating: "Generating…",
  cancelled: "Stopped",
  failed: "Failed",
};

const $ = (id) => document.getElementById(id);

const state = {
  key: null,
  personas: [],
  personaByName: new Map(),
  defaultPersona: null,
  conversations: [], // the sidebar's unfiltered pages, newest activity first
  nextCursor: null,
  query: "",
  searchSupported: undefined, // does the server filter by ?q= (probed once)
  searchResults: [],
  searchCursor: null,
  view: { cid: null, draftId: newId() }, // what the chat pane shows: a conversation or a new chat
  viewToken: 0,
  current: null, // the open conversation's resource (without messages)
  messages: [], // what the chat pane shows, in order
  olderCursor: null,
  replies: new Map(), // message id -> reply we follow over the socket (any conversation)
  pending: new Map(), // client_message_id -> a send not yet accepted
};

// --- small helpers ----------------------------------------------------------------------------

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name.startsWith("aria-") || name.startsWith("data-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

// stroke icons (24x24), drawn as SVG so they need no emoji font
const ICONS = {
  edit: "M17 3a2.83 2.83 0 1 1 4 4L7.5 20.5 2 22l1.5-5.5L17 3z",
  trash: "M3 6h18M19 6l-1 14a2 2 0 0 1-2 2H8a2 2 0 0 1-2-2L5 6m3 0V4a2 2 0 0 1 2-2h4a2 2 0 0 1 2 2v2",
  up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
  down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
};

function icon(name) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ viewBox: "0 0 24 24", width: "16", height: "16", fill: "none",
    stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round",
    "aria-hidden": "true", focusable: "false", class: "icon" })) svg.setAttribute(k, v);
  const path = document.createElementNS(NS, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function formatUsd(value) {
  const v = Number(value) || 0;
  if (v === 0) return "$0";
  if (v >= 0.01) return `$${v.toFixed(4)}`;
  return `$${v.toFixed(6)}`;
}

function formatWhen(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric", year: "numeric" });
}

/** A selector matching every class of ``className`` ("thumb up" -> ".thumb.up"). */
function classSelector(className) {
  return className.split(/\s+/).filter(Boolean).map((c) => `.${CSS.escape(c)}`).join("") || "*";
}

function personaOf(name) {
  return state.personaByName.get(name) || null;
}

function personaLabel(name) {
  const p = personaOf(name);
  return (p && (p.display_name || p.name)) || name || "Assistant";
}

// --- REST -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `Request failed (${status}).`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err.details || {};
  }
}

async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/api/v1${path}`, init);
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    const err = new ApiError(res.status, data);
    if (res.status === 401) signedOut("Your API key was not accepted; sign in again.");
    throw err;
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

function showError(message) {
  const box = $("chat-error");
  box.textContent = message;
  box.hidden = !message;
}

// --- sign in / out ----------------------------------------------------------------------------

function keyFromFragment() {
  const match = /^#key=([^&]+)/.exec(location.hash);
  if (!match) return null;
  // take the key out of the address bar (and so out of history and bookmarks) at once
  history.replaceState(null, "", location.pathname + location.search);
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function showSignin(message = "") {
  $("app").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.textContent = message;
  error.hidden = !message;
  $("signin-key").focus();
}

function signedOut(message) {
  if (!state.key) return;
  state.key = null;
  localStorage.removeItem(KEY_STORAGE);
  socket.stop();
  showSignin(message);
}

async function signIn(key) {
  socket.stop(); // a new key: the old socket belongs to the old user
  state.replies.clear();
  state.pending.clear();
  state.key = key;
  try {
    const personas = await api("GET", "/personas");
    setPersonas(personas);
  } catch (err) {
    if (err.status === 401) return false;
    // server or network trouble: keep the key and carry on; things retry
    showError(`Could not reach the server: ${err.message}`);
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("signin").hidden = true;
  $("app").hidden = false;
  socket.start();
  loadConversations({ reset: true });
  const fromHash = /^#(c_[\w-]+)$/.exec(location.hash);
  if (fromHash) openConversation(fromHash[1], { updateHash: false });
  else newChat({ focus: true });
  return true;
}

// --- personas ---------------------------------------------------------------------------------

function setPersonas(data) {
  state.personas = data.items || [];
  state.personaByName = new Map(state.personas.map((p) => [p.name, p]));
  state.defaultPersona = data.default || (state.personas[0] && state.personas[0].name) || null;
  const select = $("persona-select");
  select.replaceChildren(...state.personas.map((p) => el("option", {
    value: p.name, text: p.display_name && p.display_name !== p.name ? `${p.display_name} (${p.name})` : p.name,
  })));
  if (state.defaultPersona) select.value = state.defaultPersona;
  showPersonaDescription();
}

function selectedPersona() {
  return $("persona-select").value || state.defaultPersona;
}

function showPersonaDescription() {
  const p = personaOf(selectedPersona());
  const steps = p && p.steps && p.steps.length ? ` Answers in parts: ${p.steps.map((s) => s.label || s.name).join(" → ")}.` : "";
  $("persona-description").textContent = p ? `${p.description || ""}${steps}`.trim() : "";
}

// --- the sidebar ------------------------------------------------------------------------------

async function loadConversations({ reset = false } = {}) {
  if (state.query) return search({ reset });
  const cursor = reset ? null : state.nextCursor;
  try {
    const page = await api("GET", `/conversations?limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    if (state.query) return; // a search started meanwhile
    state.conversations = reset ? page.items : mergeConversations(state.conversations, page.items);
    state.nextCursor = page.next_cursor;
    renderConversationList();
  } catch (err) {
    if (err.status !== 401) {
      $("search-note").textContent = `Could not load conversations: ${err.message}`;
      $("search-note").hidden = false;
    }
  }
}

function mergeConversations(have, more) {
  const seen = new Set(have.map((c) => c.id));
  return have.concat(more.filter((c) => !seen.has(c.id)));
}

async function probeSearch() {
  // a server that knows ?q= finds nothing for a random string; one that ignores q lists everything
  try {
    const page = await api("GET", `/conversations?limit=1&q=${encodeURIComponent(`zz-${newId()}`)}`);
    return page.items.length === 0;
  } catch (err) {
    return false;
  }
}

async function search({ reset = true } = {}) {
  const query = state.query;
  const note = $("search-note");
  if (state.searchSupported === undefined) state.searchSupported = await probeSearch();
  if (query !== state.query) return;
  if (state.searchSupported) {
    try {
      const cursor = reset ? null : state.searchCursor;
      const page = await api("GET", `/conversations?limit=${PAGE_SIZE}&q=${encodeURIComponent(query)}` +
        (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
      if (query !== state.query) return;
      state.searchResults = reset ? page.items : mergeConversations(state.searchResults, page.items);
      state.searchCursor = page.next_cursor;
      note.hidden = true;
      renderConversationList();
      return;
    } catch (err) {
      if (err.status === 401) return;
      if (err.status !== 400 || err.code === "invalid_query") {
        note.textContent = err.code === "invalid_query" ? err.message : `Search failed: ${err.message}`;
        note.hidden = false;
        return;
      }
      // any other 400: this server does not take q, so search the titles loaded here instead
    }
  }
  const needle = query.toLowerCase();
  state.searchResults = state.conversations.filter((c) => (c.title || "").toLowerCase().includes(needle));
  state.searchCursor = null;
  note.textContent = "Searching the titles of the conversations loaded so far.";
  note.hidden = false;
  renderConversationList();
}

function renderConversationList() {
  const items = state.query ? state.searchResults : state.conversations;
  const list = $("conversation-list");
  const focused = document.activeElement && document.activeElement.closest(".conversation-item");
  const focusId = focused && focused.dataset.id;
  const focusClass = focused && document.activeElement.className;
  list.replaceChildren(...items.map(conversationItem));
  $("conversation-empty").hidden = items.length > 0;
  $("conversation-empty").textContent = state.query ? "No conversations match." : "No conversations yet.";
  $("load-more").hidden = !(state.query ? state.searchCursor : state.nextCursor);
  if (!state.query) $("search-note").hidden = true;
  if (focusId) {
    const again = list.querySelector(`.conversation-item[data-id="${CSS.escape(focusId)}"] ${classSelector(focusClass)}`);
    if (again) again.focus();
  }
}

function conversationItem(conv) {
  const title = conv.title || "Untitled";
  const current = state.view.cid === conv.id;
  const li = el("li", { class: `conversation-item${current ? " current" : ""}`, "data-id": conv.id });
  const found = state.query && conv.match === "message" && conv.snippet;
  const open = el("button", {
    type: "button", class: "open", "aria-current": current ? "page" : null,
    onclick: () => { openConversation(conv.id, { highlight: found ? conv.message_id : null }); closeSidebar(); },
  }, el("span", { class: "title", text: title }),
  found ? el("span", { class: "snippet", text: conv.snippet })
    : el("span", { class: "when", text: `${formatWhen(conv.updated_at)}${conv.message_count ? ` · ${conv.message_count} messages` : ""}` }));
  const rename = el("button", {
    type: "button", class: "item-action rename", "aria-label": `Rename conversation “${title}”`, title: "Rename",
    onclick: () => startRename(li, conv),
  }, icon("edit"));
  const remove = el("button", {
    type: "button", class: "item-action delete", "aria-label": `Delete conversation “${title}”`, title: "Delete",
    onclick: () => confirmDelete(li, conv),
  }, icon("trash"));
  li.append(open, rename, remove);
  return li;
}

function startRename(li, conv) {
  const input = el("input", {
    type: "text", class: "rename-input", value: conv.title || "", maxLength: 200,
    "aria-label": "New title (Enter saves, Escape cancels)",
  });
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title !== (conv.title || "")) {
      try {
        const updated = await api("PATCH", `/conversations/${conv.id}`, { title });
        updateConversation(updated);
      } catch (err) {
        showError(`Could not rename: ${err.message}`);
      }
    }
    renderConversationList();
    const button = $("conversation-list").querySelector(`.conversation-item[data-id="${CSS.escape(conv.id)}"] .rename`);
    if (button) button.focus();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    if (e.key === "Escape") { e.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function confirmDelete(li, conv) {
  const cancel = el("button", { type: "button", text: "Cancel", onclick: () => renderConversationList() });
  const confirm = el("button", {
    type: "button", class: "danger confirm", text: "Delete",
    onclick: async () => {
      try {
        await api("DELETE", `/conversations/${conv.id}`);
      } catch (err) {
        if (err.status !== 404) { showError(`Could not delete: ${err.message}`); return; }
      }
      state.conversations = state.conversations.filter((c) => c.id !== conv.id);
      state.searchResults = state.searchResults.filter((c) => c.id !== conv.id);
      for (const [mid, reply] of state.replies) if (reply.conversation_id === conv.id) state.replies.delete(mid);
      if (state.view.cid === conv.id) newChat({ focus: false });
      renderConversationList();
      $("new-chat").focus();
    },
  });
  const box = el("div", { class: "confirm-delete", role: "group", "aria-label": `Confirm deleting “${conv.title || "Untitled"}”` },
    el("span", { text: "Delete this conversation?" }), confirm, cancel);
  box.addEventListener("keydown", (e) => { if (e.key === "Escape") renderConversationList(); });
  li.replaceChildren(box);
  cancel.focus();
}

/** Put a fresh conversation resource into the sidebar lists (moved to the top) and the header. */
function updateConversation(conv, { toTop = false } = {}) {
  const place = (list) => {
    const i = list.findIndex((c) => c.id === conv.id);
    if (i >= 0) list.splice(i, 1);
    if (i >= 0 || toTop) list.splice(toTop ? 0 : i, 0, conv);
  };
  place(state.conversations);
  if (state.query) {
    const i = state.searchResults.findIndex((c) => c.id === conv.id);
    if (i >= 0) state.searchResults[i] = conv;
  }
  if (state.view.cid === conv.id) {
    state.current = conv;
    renderHeader();
  }
  renderConversationList();
}

async function refreshConversation(cid, options) {
  try {
    const conv = await api("GET", `/conversations/${cid}`);
    delete conv.messages;
    delete conv.messages_next_cursor;
    updateConversation(conv, options);
  } catch {
    // the sidebar catches up on the next load
  }
}

// --- the chat pane ----------------------------------------------------------------------------

function renderHeader() {
  const conv = state.current;
  $("chat-title").textContent = conv ? conv.title || "Untitled" : "New chat";
  $("chat-meta").textContent = conv ? `${personaLabel(conv.persona)} · ${conv.provider || ""}${conv.model ? `/${conv.model}` : ""}` : "";
  $("chat-cost").textContent = conv ? `Total ${formatUsd(conv.cost_usd)}` : "";
  $("export-button").disabled = !conv;
  $("persona-picker").hidden = Boolean(state.view.cid);
  document.title = conv && conv.title ? `${conv.title} · chatapp` : "chatapp";
}

function newChat({ focus = true } = {}) {
  state.view = { cid: null, draftId: newId() };
  state.viewToken++;
  state.current = null;
  state.messages = [];
  state.olderCursor = null;
  history.replaceState(null, "", location.pathname + location.search);
  showError("");
  renderHeader();
  renderMessages();
  renderConversationList();
  if (focus) $("composer-input").focus();
}

function fromResource(r) {
  return {
    id: r.id,
    conversation_id: r.conversation_id,
    role: r.role,
    content: r.content || "",
    state: r.state,
    phase: r.state, // the finer live state from status events (provider_queued)
    seq: Number(r.seq) || 0,
    cost_usd: r.cost_usd,
    cached: Boolean(r.cached),
    finish_reason: r.finish_reason || null,
    error: r.error || null,
    versions: r.versions || null,
    feedback: r.feedback || null,
    el: null,
  };
}

/** Adopt a reply resource for following: keep whichever of it and what we hold is further on. */
function track(msg) {
  const held = state.replies.get(msg.id);
  if (held && held.seq >= msg.seq) {
    Object.assign(held, { versions: msg.versions || held.versions, feedback: msg.feedback || held.feedback });
    return held;
  }
  if (held) Object.assign(held, msg, { el: held.el });
  const reply = held || msg;
  state.replies.set(reply.id, reply);
  subscribe(reply);
  return reply;
}

async function openConversation(cid, { updateHash = true, highlight = null } = {}) {
  const token = ++state.viewToken;
  state.view = { cid, draftId: null };
  showError("");
  renderConversationList();
  let conv;
  try {
    conv = await api("GET", `/conversations/${cid}`);
  } catch (err) {
    if (token !== state.viewToken) return;
    if (err.status === 404) {
      newChat({ focus: false });
      showError("That conversation does not exist (any more).");
    } else if (err.status !== 401) {
      showError(`Could not open the conversation: ${err.message}`);
    }
    return;
  }
  if (token !== state.viewToken) return;
  if (updateHash) history.replaceState(null, "", `#${cid}`);
  const messages = conv.messages || [];
  state.olderCursor = conv.messages_next_cursor || null;
  delete conv.messages;
  delete conv.messages_next_cursor;
  state.current = conv;
  state.messages = messages.map((r) => {
    const msg = fromResource(r);
    return msg.role === "assistant" && LIVE.has(msg.state) ? track(msg) : msg;
  });
  renderHeader();
  renderMessages();
  renderConversationList();
  scrollToEnd(true);
  const target = highlight && $("messages").querySelector(`.message[data-id="${CSS.escape(highlight)}"]`);
  if (target) {
    target.scrollIntoView({ block: "center" });
    target.classList.add("highlight"); // a search hit: show where it matched
    setTimeout(() => target.classList.remove("highlight"), 2500);
  }
}

async function loadEarlier() {
  const cid = state.view.cid;
  if (!cid || !state.olderCursor) return;
  try {
    const page = await api("GET", `/conversations/${cid}/messages?limit=50&before=${encodeURIComponent(state.olderCursor)}`);
    if (state.view.cid !== cid) return;
    const list = $("messages");
    const anchor = list.firstElementChild && list.firstElementChild.classList.contains("greeting")
      ? list.firstElementChild.nextElementSibling : list.firstElementChild;
    const before = list.scrollHeight;
    const older = page.items.map(fromResource).map((m) => (m.role === "assistant" && LIVE.has(m.state) ? track(m) : m));
    state.messages = older.concat(state.messages);
    state.olderCursor = page.next_cursor;
    for (const msg of older) list.insertBefore(messageElement(msg), anchor);
    list.scrollTop += list.scrollHeight - before;
    renderGreeting();
    $("load-earlier").hidden = !state.olderCursor;
    refreshReplyControls();
  } catch (err) {
    showError(`Could not load earlier messages: ${err.message}`);
  }
}

function greetingFor() {
  const name = state.current ? state.current.persona : selectedPersona();
  const p = personaOf(name);
  return p && p.greeting ? { text: p.greeting, who: personaLabel(name) } : null;
}

function renderGreeting() {
  const list = $("messages");
  const old = list.querySelector(".message.greeting");
  if (old) old.remove();
  const greeting = state.olderCursor ? null : greetingFor();
  if (!greeting) return;
  const bubble = el("div", { class: "bubble md" });
  bubble.append(renderMarkdown(greeting.text));
  list.prepend(el("li", { class: "message assistant greeting", "aria-label": "Greeting" },
    el("div", { class: "who", text: greeting.who }), bubble));
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren(...state.messages.map(messageElement));
  renderGreeting();
  $("load-earlier").hidden = !state.olderCursor;
  refreshReplyControls();
}

function messageElement(msg) {
  const li = el("li", { class: `message ${msg.role}`, "data-id": msg.id || "" });
  const who = el("div", { class: "who", text: msg.role === "user" ? "You" : personaLabel(replyPersona(msg)) });
  const bubble = el("div", { class: msg.role === "user" ? "bubble" : "bubble md" });
  li.append(who, bubble);
  if (msg.role === "assistant") li.append(el("div", { class: "reply-footer" }));
  else li.append(el("div", { class: "reply-error", role: "alert", hidden: true }));
  msg.el = li;
  paint(msg);
  return li;
}

const dirty = new Set();
let frameRequested = false;

/** Repaint a message on the next animation frame (many deltas, one paint). */
function schedulePaint(msg) {
  if (!msg.el) return;
  dirty.add(msg);
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    const stick = isNearEnd();
    for (const m of dirty) paint(m);
    dirty.clear();
    if (stick) scrollToEnd(true); // it was at the end before this paint: keep it there
  });
}

function paint(msg) {
  const li = msg.el;
  if (!li) return;
  li.dataset.id = msg.id || "";
  const bubble = li.querySelector(".bubble");
  if (msg.role === "user") {
    bubble.textContent = msg.content; // user text is shown as typed, never interpreted
    const error = li.querySelector(".reply-error");
    error.textContent = msg.error ? msg.error.message : "";
    error.hidden = !msg.error;
    li.dataset.state = msg.state || "done";
    return;
  }
  const live = LIVE.has(msg.state);
  li.classList.toggle("live", live);
  li.dataset.state = msg.state;
  bubble.classList.toggle("streaming", live);
  bubble.classList.toggle("empty", !msg.content && live);
  bubble.replaceChildren(replyContent(msg));
  paintFooter(msg);
}

/** The reply's text as Markdown; a "steps" persona's labelled parts as sections. */
function replyContent(msg) {
  const persona = personaOf(replyPersona(msg));
  const steps = persona && persona.steps && persona.steps.length ? persona.steps : null;
  const parts = partsFromMarks(msg, steps) || (steps ? splitParts(msg.content, steps) : null);
  if (!parts) return renderMarkdown(msg.content);
  const frag = document.createDocumentFragment();
  for (const part of parts) {
    const section = el("section", { class: "part", "data-part": part.name, "aria-label": part.label },
      el("h4", { class: "part-label", text: part.label }));
    const body = el("div", { class: "part-body" });
    body.append(renderMarkdown(part.text));
    section.append(body);
    frag.append(section);
  }
  return frag;
}

/** The persona a reply speaks as: known from its send, else its open conversation's. */
function replyPersona(msg) {
  if (msg.persona) return msg.persona;
  if (state.current && state.current.id === msg.conversation_id) return state.current.persona;
  return state.view.cid ? null : selectedPersona();
}

/** The parts as the delta frames labelled them (when this page saw the reply from its start). */
function partsFromMarks(msg, steps) {
  const marks = msg.partMarks;
  if (!marks || !marks.length || marks[0].at !== 0) return null;
  return marks.map((mark, i) => {
    let text = msg.content.slice(mark.at, i + 1 < marks.length ? marks[i + 1].at : msg.content.length);
    const heading = /^\n*\*\*([^*\n]+)\*\*\n\n/.exec(text); // the worker's "**Label**" line
    if (heading) text = text.slice(heading[0].length);
    const step = steps && steps.find((s) => s.name === mark.name);
    return { name: mark.name, label: (step && (step.label || step.name)) || (heading && heading[1]) || mark.name, text };
  });
}

/** The parts of a structured reply: the worker starts each with "**Label**\n\n" (after "\n\n"). */
function splitParts(content, steps) {
  const found = [];
  let pos = 0;
  steps.forEach((step, i) => {
    const label = step.label || step.name;
    const heading = `**${label}**\n\n`;
    const at = content.indexOf(i || found.length ? `\n\n${heading}` : heading, pos);
    if (at < 0) return;
    const start = at + (i || found.length ? 2 : 0);
    found.push({ name: step.name, label, at, start: start + heading.length });
    pos = start + heading.length;
  });
  if (!found.length || found[0].at !== 0) return null; // text before the first part: not a structured reply
  return found.map((part, i) => ({
    name: part.name,
    label: part.label,
    text: content.slice(part.start, i + 1 < found.length ? found[i + 1].at : content.length),
  }));
}

function paintFooter(msg) {
  const footer = msg.el.querySelector(".reply-footer");
  const items = [];
  const live = LIVE.has(msg.state);
  if (live || msg.state === "cancelled" || msg.state === "failed") {
    const key = live ? msg.phase || msg.state : msg.state;
    items.push(el("span", { class: `state-badge ${key}`, text: STATE_LABELS[key] || key }));
  }
  if (live) {
    items.push(el("button", {
      type: "button", class: "stop-reply", text: "Stop", "aria-label": "Stop this reply",
      onclick: () => cancelReply(msg),
    }));
  }
  if (msg.cached) items.push(el("span", { class: "cached-badge", text: "cached", title: "Answered from the cache: no cost" }));
  if (!live) items.push(el("span", { class: "cost", title: "Cost of this reply", text: formatUsd(msg.cost_usd) }));
  const versions = msg.versions || [];
  if (versions.length > 1) {
    const at = Math.max(0, versions.indexOf(msg.id));
    items.push(el("span", { class: "versions", role: "group", "aria-label": "Versions of this reply" },
      el("button", {
        type: "button", class: "version-prev", text: "‹", disabled: at === 0,
        "aria-label": "Previous version", onclick: () => showVersion(msg, at - 1),
      }),
      el("span", { class: "version-label", text: `${at + 1}/${versions.length}` }),
      el("button", {
        type: "button", class: "version-next", text: "›", disabled: at === versions.length - 1,
        "aria-label": "Next version", onclick: () => showVersion(msg, at + 1),
      })));
  }
  if (!live) {
    const rating = msg.feedback && msg.feedback.rating;
    items.push(el("button", {
      type: "button", class: "thumb up", "aria-label": "Good reply", "aria-pressed": String(rating === "up"),
      title: "Good reply", onclick: () => rate(msg, "up"),
    }, icon("up")));
    items.push(el("button", {
      type: "button", class: "thumb down", "aria-label": "Bad reply", "aria-pressed": String(rating === "down"),
      title: "Bad reply", onclick: () => rate(msg, "down"),
    }, icon("down")));
    if (isLastReply(msg)) {
      items.push(el("button", {
        type: "button", class: "regenerate", text: "↻ Regenerate", "aria-label": "Regenerate this reply",
        onclick: () => regenerate(msg),
      }));
    }
  }
  const focusedClass = footer.contains(document.activeElement) ? document.activeElement.className : null;
  footer.replaceChildren(...items);
  if (msg.state === "failed" && msg.error) {
    footer.append(el("div", { class: "reply-error", role: "alert", text: `${msg.error.message || "The reply failed."} (${msg.error.code || "error"})` }));
  }
  if (focusedClass) {
    const again = footer.querySelector(classSelector(focusedClass));
    (again || $("composer-input")).focus();
  }
}

function isLastReply(msg) {
  for (let i = state.messages.length - 1; i >= 0; i--) {
    const m = state.messages[i];
    if (m.role === "assistant") return m === msg;
    if (m.role === "user") return false;
  }
  return false;
}

/** Repaint footers whose controls depend on the whole list (Regenerate on the last reply only) and the Stop button. */
function refreshReplyControls() {
  for (const m of state.messages) if (m.role === "assistant" && m.el) paintFooter(m);
  const live = state.messages.some((m) => m.role === "assistant" && LIVE.has(m.state));
  $("stop-button").hidden = !live;
}

function isNearEnd() {
  const list = $("messages");
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd(force = false) {
  const list = $("messages");
  if (force || isNearEnd()) list.scrollTop = list.scrollHeight;
}

// --- sending, stopping, versions, feedback ----------------------------------------------------

function sendMessage(text) {
  const cmid = newId();
  const cid = state.view.cid;
  const frame = { type: "send", conversation_id: cid, content: text, client_message_id: cmid };
  if (!cid) frame.persona = selectedPersona();
  const userMsg = { id: null, conversation_id: cid, role: "user", content: text, state: "sending", el: null };
  state.messages.push(userMsg);
  $("messages").append(messageElement(userMsg));
  scrollToEnd(true);
  state.pending.set(cmid, { frame, userMsg, draftId: state.view.draftId, cid });
  socket.send(frame); // sent now, or as soon as the socket is open (again)
  refreshReplyControls();
}

function onAccepted(frame) {
  const pending = state.pending.get(frame.client_message_id);
  if (!pending) return;
  state.pending.delete(frame.client_message_id);
  const cid = frame.conversation_id;
  pending.userMsg.id = frame.user_message_id;
  pending.userMsg.conversation_id = cid;
  pending.userMsg.state = "done";
  paint(pending.userMsg);
  const reply = fromResource({ id: frame.message_id, conversation_id: cid, role: "assistant", content: "", state: "queued", seq: 0 });
  reply.persona = pending.frame.persona || (state.current && state.current.id === cid ? state.current.persona : null);
  state.replies.set(reply.id, reply); // the sender is subscribed from seq 0 already
  const showing = state.view.cid === cid || (!state.view.cid && state.view.draftId === pending.draftId);
  if (showing) {
    if (!state.view.cid) {
      state.view = { cid, draftId: null };
      history.replaceState(null, "", `#${cid}`);
      $("persona-picker").hidden = true;
    }
    const at = state.messages.indexOf(pending.userMsg);
    state.messages.splice(at >= 0 ? at + 1 : state.messages.length, 0, reply);
    const li = messageElement(reply);
    if (pending.userMsg.el && pending.userMsg.el.isConnected) pending.userMsg.el.after(li);
    else $("messages").append(li);
    scrollToEnd();
    refreshReplyControls();
  }
  refreshConversation(cid, { toTop: true });
}

function onFrameError(frame) {
  const pending = frame.client_message_id && state.pending.get(frame.client_message_id);
  if (pending) {
    state.pending.delete(frame.client_message_id);
    pending.userMsg.state = "failed";
    pending.userMsg.error = { code: frame.code, message: `Not sent: ${frame.message}` };
    paint(pending.userMsg);
    const input = $("composer-input");
    if (!input.value) { input.value = pending.userMsg.content; autosize(); }
    refreshReplyControls();
    return;
  }
  const reply = frame.message_id && state.replies.get(frame.message_id);
  if (reply && (frame.code === "stream_expired" || frame.code === "message_not_found")) {
    reloadReply(reply); // its events are gone: the message resource has the text
    return;
  }
  if (frame.code !== "validation_error") showError(frame.message);
}

function cancelReply(msg) {
  const target = msg || [...state.messages].reverse().find((m) => m.role === "assistant" && LIVE.has(m.state));
  if (!target) return;
  if (!socket.send({ type: "cancel", message_id: target.id })) {
    api("POST", `/conversations/${target.conversation_id}/messages/${target.id}/cancel`, {}).catch((err) => showError(err.message));
  }
}

async function reloadReply(msg) {
  try {
    const r = await api("GET", `/conversations/${msg.conversation_id}/messages/${msg.id}`);
    const fresh = fromResource(r);
    Object.assign(msg, fresh, { el: msg.el });
    if (LIVE.has(msg.state)) subscribe(msg);
    else state.replies.delete(msg.id);
    schedulePaint(msg);
    refreshReplyControls();
  } catch (err) {
    if (err.status === 404) state.replies.delete(msg.id);
  }
}

/** After a reply ends: the resource has its final cost, versions and feedback; the conversation its total. */
async function settleReply(msg) {
  state.replies.delete(msg.id);
  refreshReplyControls();
  try {
    const r = await api("GET", `/conversations/${msg.conversation_id}/messages/${msg.id}`);
    if (r.content !== msg.content) {
      console.warn("chatapp: the streamed text of", msg.id, "differs from the stored reply; showing the stored one");
      msg.content = r.content;
    }
    Object.assign(msg, {
      cost_usd: r.cost_usd, cached: Boolean(r.cached), versions: r.versions || msg.versions,
      feedback: r.feedback || msg.feedback, state: r.state, error: r.error || msg.error,
    });
    schedulePaint(msg);
  } catch {
    // keep what the done frame said
  }
  refreshConversation(msg.conversation_id, { toTop: true });
}

async function regenerate(msg) {
  const cid = msg.conversation_id;
  const versions = msg.versions || [msg.id];
  const current = versions[versions.length - 1];
  try {
    const out = await api("POST", `/conversations/${cid}/regenerate`, { message_id: current });
    const reply = fromResource(out.message);
    reply.versions = out.message.versions || [...versions, reply.id];
    const at = state.messages.indexOf(msg);
    if (at < 0 || state.view.cid !== cid) return;
    state.messages[at] = reply;
    const li = messageElement(reply);
    msg.el.replaceWith(li);
    if (LIVE.has(reply.state)) track(reply);
    refreshReplyControls();
    scrollToEnd();
  } catch (err) {
    if (err.status === 404 && err.code === "not_found") showError("This server cannot regenerate replies yet.");
    else if (err.status !== 401) showError(`Could not regenerate: ${err.message}`);
  }
}

async function showVersion(msg, index) {
  const versions = msg.versions || [];
  const mid = versions[index];
  if (!mid || mid === msg.id) return;
  try {
    const r = await api("GET", `/conversations/${msg.conversation_id}/messages/${mid}`);
    const other = fromResource(r);
    other.versions = r.versions && r.versions.length ? r.versions : versions;
    const at = state.messages.indexOf(msg);
    if (at < 0) return;
    state.messages[at] = other;
    const li = messageElement(other);
    msg.el.replaceWith(li);
    if (LIVE.has(other.state)) track(other);
    refreshReplyControls();
    const button = li.querySelector(index < versions.indexOf(msg.id) ? ".version-prev" : ".version-next");
    const fallback = li.querySelector(".versions button:not(:disabled)");
    if (button && !button.disabled) button.focus();
    else if (fallback) fallback.focus();
  } catch (err) {
    showError(`Could not show that version: ${err.message}`);
  }
}

async function rate(msg, rating) {
  const before = msg.feedback;
  msg.feedback = { ...(before || {}), rating };
  paintFooter(msg);
  try {
    const r = await api("POST", `/conversations/${msg.conversation_id}/messages/${msg.id}/feedback`, { rating });
    if (r && r.feedback) msg.feedback = r.feedback;
  } catch (err) {
    msg.feedback = before;
    showError(err.status === 404 && err.code === "not_found" ? "This server does not take feedback yet."
      : `Could not save the rating: ${err.message}`);
  }
  paintFooter(msg);
}

// --- export -----------------------------------------------------------------------------------

const EXPORT_EXT = { json: "json", md: "md", csv: "csv" };

async function exportConversation(format) {
  const conv = state.current;
  if (!conv) return;
  try {
    const res = await api("GET", `/conversations/${conv.id}/export?format=${format}`, undefined, { raw: true });
    const blob = await res.blob();
    const disposition = res.headers.get("Content-Disposition") || "";
    const named = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
    const name = named ? decodeURIComponent(named[1]) : `conversation-${conv.id}.${EXPORT_EXT[format]}`;
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    if (err.status !== 401) {
      showError(err.status === 404 && err.code === "not_found" ? "This server cannot export conversations yet."
        : `Export failed: ${err.message}`);
    }
  }
}

function setExportMenu(open) {
  $("export-menu").hidden = !open;
  $("export-button").setAttribute("aria-expanded", String(open));
  if (open) $("export-menu").querySelector("button").focus();
}

// --- usage ------------------------------------------------------------------------------------

async function showUsage() {
  const dialog = $("usage-dialog");
  const body = $("usage-body");
  body.replaceChildren(el("p", { class: "note", text: "Loading…" }));
  if (!dialog.open) dialog.showModal();
  try {
    const u = await api("GET", "/usage?days=31");
    const daily = u.daily || [];
    const todayRow = daily[daily.length - 1] || {};
    const month = (todayRow.date || new Date().toISOString()).slice(0, 7);
    const monthCost = daily.filter((d) => (d.date || "").startsWith(month)).reduce((s, d) => s + (d.cost_usd || 0), 0);
    const budget = u.budget || {};
    const cache = u.cache || {};
    const totals = u.totals || {};
    const limit = (v) => (v === null || v === undefined ? "" : ` of ${formatUsd(v)}`);
    const rows = [
      ["Spent today", `${formatUsd(budget.spent_today_usd ?? todayRow.cost_usd ?? 0)}${limit(budget.daily_limit_usd)}`],
      ["Spent this month", `${formatUsd(budget.spent_this_month_usd ?? monthCost)}${limit(budget.monthly_limit_usd)}`],
      ["Replies (31 days)", String(totals.replies ?? 0)],
      ["Cache hit rate", `${Math.round((cache.hit_rate || 0) * 100)}% (${cache.hits || 0} of ${(cache.hits || 0) + (cache.misses || 0)})`],
      ["Saved by the cache", formatUsd(cache.cost_saved_usd ?? totals.cost_saved_usd ?? 0)],
      ["Projected per month", formatUsd((u.projections || {}).per_month_usd || 0)],
    ];
    const dl = el("dl");
    for (const [name, value] of rows) dl.append(el("dt", { text: name }), el("dd", { text: value }));
    body.replaceChildren(dl);
  } catch (err) {
    body.replaceChildren(el("p", { class: "error", text: `Could not load usage: ${err.message}` }));
  }
}

// --- the websocket ----------------------------------------------------------------------------

const socket = {
  ws: null,
  attempt: 0,
  timer: null,
  running: false,
  connecting: false,

  start() {
    this.running = true;
    this.connect();
  },

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  },

  async connect() {
    clearTimeout(this.timer);
    if (!this.running || this.connecting || this.ws) return;
    this.connecting = true;
    setConnection("connecting");
    let ticket;
    try {
      ticket = (await api("POST", "/ws-tickets")).ticket;
    } catch (err) {
      this.connecting = false;
      if (err.status !== 401) this.retry();
      return;
    }
    this.connecting = false;
    if (!this.running) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      setConnection("up");
      for (const reply of state.replies.values()) subscribe(reply); // resume where each one stopped
      for (const pending of state.pending.values()) this.send(pending.frame); // idempotent: same client_message_id
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      setConnection("down");
      if (this.running) this.retry(event.code);
    });
  },

  /** Exponential backoff with jitter; a server restart (1012) or a too-slow close (1013) retries at once. */
  retry(code) {
    clearTimeout(this.timer);
    const prompt = (code === 1012 || code === 1013) && this.attempt === 0;
    const ceiling = Math.min(30_000, 500 * 2 ** this.attempt);
    const delay = prompt ? 50 + Math.random() * 250 : ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt = Math.min(this.attempt + 1, 10);
    this.timer = setTimeout(() => this.connect(), delay);
  },

  /** Send a frame if the socket is open; false otherwise (pending sends go out on reconnect). */
  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  },
};

function setConnection(status) {
  const badge = $("connection");
  badge.className = `connection ${status === "up" ? "up" : status === "down" ? "down" : ""}`;
  badge.textContent = status === "up" ? "● connected" : status === "down" ? "○ reconnecting…" : "○ connecting…";
  badge.dataset.status = status;
}

function subscribe(reply) {
  if (!LIVE.has(reply.state)) return;
  socket.send({ type: "subscribe", message_id: reply.id, after_seq: reply.seq });
}

function onFrame(frame) {
  if (frame.type === "accepted") onAccepted(frame);
  else if (frame.type === "status" || frame.type === "delta" || frame.type === "done") applyEvent(frame);
  else if (frame.type === "error" && frame.seq !== undefined && frame.message_id) applyEvent(frame);
  else if (frame.type === "error") onFrameError(frame);
}

function applyEvent(frame) {
  const reply = state.replies.get(frame.message_id);
  if (!reply) return;
  if (frame.seq <= reply.seq) return; // seen already (a replay after a resubscribe)
  if (frame.seq !== reply.seq + 1) {
    subscribe(reply); // a gap: ask for everything after what we have
    return;
  }
  reply.seq = frame.seq;
  if (frame.type === "status") {
    reply.phase = frame.state;
    reply.state = frame.state === "queued" ? "queued" : "generating";
  } else if (frame.type === "delta") {
    if (frame.part) {
      const marks = reply.partMarks || (reply.partMarks = []);
      if (!marks.length || marks[marks.length - 1].name !== frame.part) marks.push({ name: frame.part, at: reply.content.length });
    }
    reply.content += frame.text;
    if (reply.state === "queued") reply.state = reply.phase = "generating";
  } else if (frame.type === "done") {
    reply.state = frame.finish_reason === "cancelled" ? "cancelled" : "done";
    reply.finish_reason = frame.finish_reason;
    reply.cost_usd = frame.cost_usd;
    reply.cached = Boolean(frame.cached);
  } else if (frame.type === "error") {
    reply.state = "failed";
    reply.error = { code: frame.code, message: frame.message };
  }
  schedulePaint(reply);
  if (!LIVE.has(reply.state)) settleReply(reply);
}

// --- the composer and the rest of the page ------------------------------------------------------

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

function openSidebar() {
  $("app").classList.add("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "true");
  $("sidebar-toggle").setAttribute("aria-label", "Hide conversations");
  $("sidebar-backdrop").hidden = !window.matchMedia("(max-width: 760px)").matches;
  $("new-chat").focus();
}

function closeSidebar() {
  if (!$("app").classList.contains("sidebar-open")) return;
  $("app").classList.remove("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
  $("sidebar-toggle").setAttribute("aria-label", "Show conversations");
  $("sidebar-backdrop").hidden = true;
  if ($("sidebar").contains(document.activeElement)) $("sidebar-toggle").focus();
}

function wire() {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("signin-key").value.trim();
    if (!key) return;
    const ok = await signIn(key);
    if (!ok) showSignin("That API key was not accepted.");
    else $("signin-key").value = "";
  });
  $("signout-button").addEventListener("click", () => {
    state.replies.clear();
    state.pending.clear();
    signedOut("Signed out.");
    history.replaceState(null, "", location.pathname);
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("composer-input");
    const text = input.value;
    if (!text.trim()) return;
    // a new chat's first message creates the conversation: the next one waits for its id
    if (!state.view.cid && [...state.pending.values()].some((p) => p.draftId === state.view.draftId)) return;
    input.value = "";
    autosize();
    sendMessage(text);
  });
  $("composer-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer-input").addEventListener("input", autosize);
  $("stop-button").addEventListener("click", () => cancelReply(null));
  $("new-chat").addEventListener("click", () => { newChat(); closeSidebar(); });
  $("load-more").addEventListener("click", () => (state.query ? search({ reset: false }) : loadConversations()));
  $("load-earlier").addEventListener("click", loadEarlier);
  $("persona-select").addEventListener("change", () => { showPersonaDescription(); renderGreeting(); });
  let searchTimer = null;
  $("search-input").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.query = e.target.value.trim();
      if (state.query) search({ reset: true });
      else { $("search-note").hidden = true; renderConversationList(); }
    }, 250);
  });
  $("usage-button").addEventListener("click", showUsage);
  $("export-button").addEventListener("click", () => setExportMenu($("export-menu").hidden));
  $("export-menu").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-format]");
    if (!button) return;
    setExportMenu(false);
    $("export-button").focus();
    exportConversation(button.dataset.format);
  });
  $("export-menu").addEventListener("keydown", (e) => {
    const buttons = [...$("export-menu").querySelectorAll("button")];
    const i = buttons.indexOf(document.activeElement);
    if (e.key === "ArrowDown") { e.preventDefault(); buttons[(i + 1) % buttons.length].focus(); }
    if (e.key === "ArrowUp") { e.preventDefault(); buttons[(i - 1 + buttons.length) % buttons.length].focus(); }
    if (e.key === "Escape") { e.preventDefault(); setExportMenu(false); $("export-button").focus(); }
  });
  document.addEventListener("click", (e) => {
    if (!$("export-menu").hidden && !$("export-menu-wrap").contains(e.target)) setExportMenu(false);
  });
  $("sidebar-toggle").addEventListener("click", () => {
    if ($("app").classList.contains("sidebar-open")) closeSidebar();
    else openSidebar();
  });
  $("sidebar-backdrop").addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && $("app").classList.contains("sidebar-open")) closeSidebar();
  });
  document.querySelector(".skip-link").addEventListener("click", (e) => {
    e.preventDefault();
    $("composer-input").focus();
  });
  window.addEventListener("hashchange", () => {
    const key = keyFromFragment();
    if (key) { signIn(key); return; }
    const m = /^#(c_[\w-]+)$/.exec(location.hash);
    if (m && state.key && m[1] !== state.view.cid) openConversation(m[1], { updateHash: false });
  });
  window.addEventListener("online", () => { if (state.key && !socket.ws) socket.connect(); });
}

async function main() {
  const fromFragment = keyFromFragment(); // first: the key leaves the address bar before anything else runs
  wire();
  const key = fromFragment || localStorage.getItem(KEY_STORAGE);
  if (!key) {
    showSignin();
    return;
  }
  if (!(await signIn(key))) showSignin("That API key was not accepted.");
}

main();
