// Confer's web client: conversations, messages, files and calls over the
// WebSocket protocol of docs/protocol.md. Plain ES modules, no build step;
// the server embeds these files.
//
// Sign-in: `#token=<user token>` in the URL (an application embedding the
// page hands it over), optionally `&context=<object>&title=<title>` to
// open a discussion of a business object; otherwise the demo application
// when the server offers it.
import { CallManager } from './call.js';
import { formatText } from './format.js';
import * as copies from './copies.js';
import * as marks from './marks.js';
import { mentionsIn, mentionsOf } from './mentions.js';
import * as threads from './threads.js';

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) if (c != null) node.append(c);
  return node;
};

const state = {
  token: null,
  userId: null,
  demo: false,
  ws: null,
  connected: false,
  lastSeq: 0,               // the last event number processed (resume point)
  nextRequest: 1,
  waiting: new Map(),       // request id → {resolve, reject}
  outbox: new Map(),        // client_id → send frame not yet acknowledged
  conversations: new Map(), // id → conversation (with unread)
  messages: new Map(),      // conversation id → Map(seq → message)
  names: new Map(),         // user id → name
  presence: new Map(),      // user id → online/away/offline
  members: new Map(),       // conversation id → [user ids]
  pins: new Map(),          // conversation id → Set(seq of pinned messages)
  replies: new Map(),       // conversation id → Map(seq → reply in a thread)
  thread: null,             // the thread open in the panel: {conversation_id, rootSeq, rootId}
  quoting: null,            // the message the composer quotes
  current: null,
  readMark: new Map(),      // conversation id → seq read when opened
  typing: new Map(),        // conversation id → Map(user → until)
  attached: [],             // file ids ready to attach
  retry: 0,
  context: null,
};

// ---- connection ---------------------------------------------------------

// The token goes in the Sec-WebSocket-Protocol header (`confer.bearer.<token>`,
// with `confer.v1`, which the server selects), never in the URL, which
// servers and proxies log.
function wsUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const since = state.lastSeq ? `?since=${state.lastSeq}` : '';
  return `${proto}//${location.host}/api/v1/ws${since}`;
}

function setStatus(text, online) {
  const s = $('#status');
  s.textContent = text;
  s.classList.toggle('online', !!online);
}

function connect() {
  const ws = new WebSocket(wsUrl(), ['confer.v1', `confer.bearer.${state.token}`]);
  state.ws = ws;
  ws.onmessage = (e) => onFrame(JSON.parse(e.data));
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.connected = false;
    for (const { reject } of state.waiting.values()) reject(new Error('disconnected'));
    state.waiting.clear();
    if (e.code === 4003 || e.code === 1008) {
      setStatus('signed out', false);
      return signedOut();
    }
    // Back off 0.5, 1, 2, 4, 5, 5 … s; resume from the last event. After
    // two failures, check whether the token is still good.
    const delay = Math.min(5000, 500 * 2 ** state.retry++);
    setStatus('reconnecting…', false);
    setTimeout(async () => {
      if (state.retry > 2 && await tokenExpired()) return;
      connect();
    }, delay);
  };
}

/** Whether the server refuses the token (it expired): a demo user signs
 * in again; an embedded page asks its application (the parent window) for
 * a new one and connects when it arrives. */
async function tokenExpired() {
  const r = await fetch('/api/v1/me', { headers: { authorization: `Bearer ${state.token}` } }).catch(() => null);
  if (!r || r.status !== 401) return false;
  if (state.demo) {
    await signedOut();
    return true;
  }
  setStatus('session expired', false);
  state.waitingForToken = true;
  // Delivered only if the parent is one of them.
  for (const origin of parentOrigins) window.parent.postMessage({ type: 'confer-token-expired' }, origin);
  return true;
}

// The origins that may embed the page and hand it tokens: this server's
// own and the operator's `[web] parent_origins` (the server writes them
// into the page; the same list is the CSP's frame-ancestors).
const parentOrigins = new Set([
  location.origin,
  ...(document.querySelector('meta[name="confer-parent-origins"]')?.content || '').split(' ').filter(Boolean),
]);

// An embedding application hands over a new token:
// frame.contentWindow.postMessage({type: 'confer-token', token}, confer_origin).
// Messages from any other window or origin are ignored.
window.addEventListener('message', (e) => {
  const data = e.data;
  if (e.source !== window.parent || !parentOrigins.has(e.origin)) return;
  if (!data || data.type !== 'confer-token' || typeof data.token !== 'string') return;
  state.token = data.token;
  sessionStorage.setItem('confer.token', data.token);
  if (state.waitingForToken) {
    state.waitingForToken = false;
    state.retry = 0;
    connect();
  }
});

async function signedOut() {
  // A demo user's token expired: sign in again under the same name.
  const name = sessionStorage.getItem('confer.demoName');
  if (state.demo && name) {
    try {
      await demoSignIn(name);
      connect();
      return;
    } catch (_) { /* fall through */ }
  }
  sessionStorage.removeItem('confer.token');
  location.hash = '';
  location.reload();
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

/** Sends a request and resolves with the frame answering it. */
function request(frame) {
  const id = `r${state.nextRequest++}`;
  return new Promise((resolve, reject) => {
    if (!state.connected) return reject(new Error('not connected'));
    state.waiting.set(id, { resolve, reject });
    send({ ...frame, id });
  });
}

async function onWelcome(frame) {
  state.userId = frame.user_id;
  state.connected = true;
  state.retry = 0;
  // The first connection starts at the newest event: resume from there.
  if (!state.lastSeq) state.lastSeq = frame.event_seq;
  setStatus('online', true);
  // A call is resumed first: its place is kept only for a grace period.
  calls.onWelcome(frame.calls || []);
  // Messages not yet acknowledged are sent again: the client id makes a
  // repeat harmless.
  for (const pending of state.outbox.values()) sendMessage(pending);
  await loadConversations();
  if (state.context && !state.current) {
    const opened = await request({ type: 'open_context', context: state.context.context, title: state.context.title });
    upsertConversation(opened.conversation);
    openConversation(opened.conversation.id);
  } else if (state.current) {
    await loadHistory(state.current, { after: lastSeqOf(state.current) });
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case 'welcome':
      onWelcome(frame).catch((e) => console.warn('welcome', e));
      return;
    case 'event':
      if (frame.seq <= state.lastSeq) return; // already seen (replay overlap)
      state.lastSeq = frame.seq;
      onEvent(frame.event);
      return;
    case 'ephemeral':
      onEphemeral(frame.event);
      return;
    case 'resync':
      state.lastSeq = frame.event_seq || 0;
      state.messages.clear();
      loadConversations().then(() => state.current && loadHistory(state.current, {}));
      return;
    default: {
      const waiter = state.waiting.get(frame.id);
      if (!waiter) return;
      state.waiting.delete(frame.id);
      if (frame.type === 'error') waiter.reject(Object.assign(new Error(frame.message), { code: frame.code }));
      else waiter.resolve(frame);
    }
  }
}

function onEvent(ev) {
  switch (ev.kind) {
    case 'message':
    case 'message_edited':
    case 'message_deleted':
      storeMessage(ev.message);
      if (ev.kind === 'message') countUnread(ev.message);
      if (ev.message.conversation_id === state.current) {
        renderMessages();
        markRead();
      }
      return;
    case 'conversation':
      upsertConversation(ev.conversation);
      if (!ev.conversation.is_group && !state.members.has(ev.conversation.id)) loadMembers(ev.conversation.id);
      return;
    case 'read': {
      if (ev.thread_id) return; // a thread's mark, not the conversation's
      const c = state.conversations.get(ev.conversation_id);
      if (c) {
        c.unread = Math.max(0, c.last_seq - ev.seq);
        if (!c.unread) c.mentions = 0;
        renderConversations();
      }
      return;
    }
    case 'reaction':
      marks.applyReaction(ev);
      if (ev.conversation_id === state.current) { renderMessages(); threads.refresh(); }
      return;
    case 'pin': {
      const pins = state.pins.get(ev.conversation_id) || new Set();
      if (ev.pinned) pins.add(ev.seq); else pins.delete(ev.seq);
      state.pins.set(ev.conversation_id, pins);
      if (ev.conversation_id === state.current) { renderHeader(); renderMessages(); threads.refresh(); }
      return;
    }
    case 'removed':
      state.conversations.delete(ev.conversation_id);
      if (state.current === ev.conversation_id) state.current = null;
      renderConversations();
      return;
    default:
  }
}

function onEphemeral(ev) {
  if (ev.kind === 'typing') {
    if (ev.user_id === state.userId) return;
    const map = state.typing.get(ev.conversation_id) || new Map();
    map.set(ev.user_id, Date.now() + 4000);
    state.typing.set(ev.conversation_id, map);
    renderTyping();
    setTimeout(renderTyping, 4100);
  } else if (ev.kind === 'presence') {
    state.presence.set(ev.user_id, ev.presence);
    renderConversations();
  } else if (ev.kind.startsWith('call')) {
    calls.onEvent(ev);
  }
}

// ---- conversations ------------------------------------------------------

async function loadConversations() {
  let after;
  const seen = new Set();
  do {
    const page = await request({ type: 'list', limit: 100, ...(after ? { after } : {}) });
    for (const c of page.conversations) { upsertConversation(c, true); seen.add(c.id); }
    after = page.next;
  } while (after);
  for (const id of [...state.conversations.keys()]) if (!seen.has(id)) state.conversations.delete(id);
  renderConversations();
  // Names and presence of the other person in one-to-one conversations.
  for (const c of state.conversations.values()) if (!c.is_group && !state.members.has(c.id)) loadMembers(c.id);
}

function upsertConversation(c, quiet) {
  const old = state.conversations.get(c.id);
  state.conversations.set(c.id, { ...old, ...c, unread: c.unread ?? old?.unread ?? 0 });
  if (!quiet) renderConversations();
}

async function loadMembers(id) {
  try {
    const answer = await request({ type: 'members', conversation_id: id });
    state.members.set(id, answer.members.map((m) => m.user_id));
    for (const m of answer.members) {
      state.names.set(m.user_id, m.name);
      if (m.presence) state.presence.set(m.user_id, m.presence);
    }
    if (state.names.has(state.userId)) $('#me-name').textContent = state.names.get(state.userId);
    renderConversations();
    if (id === state.current) { renderHeader(); renderMessages(); }
  } catch (e) { console.warn('members', e); }
}

function countUnread(m) {
  const c = state.conversations.get(m.conversation_id);
  if (!c) return;
  c.last_seq = Math.max(c.last_seq || 0, m.seq);
  c.last_activity = m.created_at;
  const mine = m.author.kind === 'user' && m.author.user_id === state.userId;
  const looking = m.conversation_id === state.current && document.visibilityState === 'visible';
  if (!mine && !looking) c.unread = (c.unread || 0) + 1;
  if (!mine && !looking && mentionsOf(m, state.userId)) c.mentions = (c.mentions || 0) + 1;
  renderConversations();
}

function otherMember(c) {
  return (state.members.get(c.id) || []).find((u) => u !== state.userId);
}

function renderConversations() {
  const list = $('#conversations');
  const sorted = [...state.conversations.values()]
    .filter((c) => c.displayed !== false || c.id === state.current)
    .sort((a, b) => (b.last_activity || '').localeCompare(a.last_activity || ''));
  list.replaceChildren(...sorted.map((c) => {
    const other = c.is_group ? null : otherMember(c);
    const dot = c.is_group ? null : el('span', { className: `presence ${state.presence.get(other) || 'offline'}`, title: state.presence.get(other) || 'offline' });
    const li = el('li', { className: `conv${c.id === state.current ? ' active' : ''}` },
      dot,
      el('span', { className: 'title', textContent: c.title }),
      c.mentions > 0 ? el('span', { className: 'mention-badge', textContent: `@${c.mentions}`, title: 'Mentions of you' }) : null,
      c.unread > 0 ? el('span', { className: 'unread', textContent: String(c.unread) }) : null);
    li.dataset.id = c.id;
    li.onclick = () => openConversation(c.id);
    return li;
  }));
}

async function openConversation(id) {
  state.current = id;
  const c = state.conversations.get(id);
  // Where "new messages" starts: only when there were unread ones.
  state.readMark.set(id, c && c.unread ? c.last_seq - c.unread : Infinity);
  renderConversations();
  renderHeader();
  renderAttached();
  $('#text').disabled = false;
  $('#send').disabled = false;
  $('#call-audio').disabled = false;
  $('#call-video').disabled = false;
  if (!state.messages.has(id)) await loadHistory(id, {});
  if (!state.pins.has(id)) await marks.loadPins(id);
  if (state.thread && state.thread.conversation_id !== id) threads.closeThread();
  copies.renderQuoting();
  renderMessages(true);
  markRead();
  if (!state.members.has(id)) loadMembers(id);
}

function renderHeader() {
  const c = state.conversations.get(state.current);
  if (!c) return;
  $('#chat-title').textContent = c.title + (c.context ? ` · ${c.context}` : '');
  const ids = state.members.get(c.id) || [];
  $('#chat-members').textContent = ids.map(nameOf).join(', ');
  const pinned = (state.pins.get(c.id) || new Set()).size;
  $('#show-pins').hidden = !pinned;
  $('#show-pins').textContent = `📌 ${pinned}`;
}

function nameOf(userId) {
  if (userId === state.userId) return state.names.get(userId) || 'You';
  return state.names.get(userId) || `user ${String(userId).slice(0, 8)}`;
}

// ---- messages -----------------------------------------------------------

function storeMessage(m) {
  if (m.thread_id) { threads.storeReply(m); return; }
  const map = state.messages.get(m.conversation_id) || new Map();
  // Events and acks carry a message without its reactions: keep the ones
  // known (a deleted message has none).
  const old = map.get(m.seq);
  if (!m.reactions && old && old.reactions && !m.deleted_at) m.reactions = old.reactions;
  map.set(m.seq, m);
  state.messages.set(m.conversation_id, map);
  state.outbox.delete(m.client_id);
}

function lastSeqOf(id) {
  const map = state.messages.get(id);
  return map && map.size ? Math.max(...map.keys()) : 0;
}

async function loadHistory(id, { before, after }) {
  // Replies show in their thread's panel, not here.
  const frame = { type: 'history', conversation_id: id, limit: 50, top_level: true };
  if (before) frame.before = before;
  if (after) frame.after = after;
  const answer = await request(frame);
  if (!state.messages.has(id)) state.messages.set(id, new Map());
  for (const m of answer.messages) storeMessage(m);
  if (id === state.current) renderMessages(!before);
  return answer.messages.length;
}

function markRead() {
  const id = state.current;
  const c = state.conversations.get(id);
  if (!c || document.visibilityState !== 'visible') return;
  const seq = Math.max(lastSeqOf(id), c.last_seq || 0);
  if (seq <= 0) return;
  if (c.unread || c.mentions) { c.unread = 0; c.mentions = 0; renderConversations(); }
  if (c.readSent === seq) return;
  c.readSent = seq;
  request({ type: 'read', conversation_id: id, seq }).catch(() => { c.readSent = 0; });
}

function renderMessages(toBottom) {
  const box = $('#messages');
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 40;
  const map = state.messages.get(state.current) || new Map();
  const mark = state.readMark.get(state.current) ?? Infinity;
  const nodes = [];
  let markShown = false;
  for (const m of [...map.values()].sort((a, b) => a.seq - b.seq)) {
    if (!markShown && m.seq > mark && m.author.user_id !== state.userId) {
      nodes.push(el('div', { className: 'read-mark', textContent: 'new messages' }));
      markShown = true;
    }
    nodes.push(renderMessage(m));
  }
  for (const p of state.outbox.values()) {
    if (p.conversation_id !== state.current || p.thread_id) continue;
    nodes.push(el('div', { className: 'msg mine pending' }, el('div', { className: 'text', textContent: p.text || '…' })));
  }
  box.replaceChildren(...nodes);
  if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
}

function renderMessage(m, { inThread } = {}) {
  const mine = m.author.kind === 'user' && m.author.user_id === state.userId;
  const author = m.author.kind === 'app' ? 'Bot' : nameOf(m.author.user_id);
  const node = el('div', { className: `msg${mine ? ' mine' : ''}${m.deleted_at ? ' deleted' : ''}${!mine && mentionsOf(m, state.userId) ? ' mentions-me' : ''}` });
  node.dataset.seq = m.seq;
  node.dataset.id = m.id;
  const pinned = (state.pins.get(m.conversation_id) || new Set()).has(m.seq);
  if (pinned) node.classList.add('pinned');
  if (!m.deleted_at) {
    const tools = el('span', { className: 'tools' });
    const react = el('button', { className: 'react', type: 'button', textContent: '☺+', title: 'React' });
    react.onclick = (e) => { e.stopPropagation(); marks.showPalette(node, m); };
    tools.append(react);
    if (!inThread && !m.recipients) {
      const reply = el('button', { className: 'reply', type: 'button', textContent: 'reply' });
      reply.onclick = () => threads.openThread(m);
      tools.append(reply);
    }
    if (!inThread) {
      const quote = el('button', { className: 'quote-it', type: 'button', textContent: 'quote' });
      quote.onclick = () => copies.startQuote(m);
      tools.append(quote);
    }
    const fwd = el('button', { className: 'forward', type: 'button', textContent: 'forward' });
    fwd.onclick = () => copies.forward(m);
    tools.append(fwd);
    if (!m.recipients) {
      const pin = el('button', { className: 'pin', type: 'button', textContent: pinned ? 'unpin' : 'pin' });
      pin.onclick = () => request({ type: 'pin', conversation_id: m.conversation_id, message_id: m.id, unpin: pinned })
        .catch((err) => alert(err.message));
      tools.append(pin);
    }
    if (mine) {
      const edit = el('button', { className: 'edit', type: 'button', textContent: 'edit' });
      edit.onclick = () => editMessage(m);
      const del = el('button', { className: 'delete', type: 'button', textContent: 'delete' });
      del.onclick = () => request({ type: 'delete', conversation_id: m.conversation_id, message_id: m.id });
      tools.append(edit, del);
    }
    node.append(tools);
  }
  node.append(el('div', {},
    el('span', { className: 'author', textContent: author }),
    el('span', { className: 'meta', textContent: new Date(m.created_at).toLocaleTimeString() + (m.edited_at ? ' · edited' : '') + (pinned ? ' · 📌 pinned' : '') })));
  if (m.forwarded) node.append(copies.renderForwarded(m));
  if (m.quote) node.append(copies.renderQuote(m));
  const call = m.data && m.data.call;
  const text = m.deleted_at ? 'message deleted' : m.text;
  // Formatting is only for people's words: a deleted message and a call's
  // note show as they are.
  const body = m.deleted_at || call ? [text] : formatText(text || '');
  node.append(el('div', { className: `text${call ? ' call-note' : ''}` }, ...body));
  if (m.attachments && m.attachments.length) node.append(renderAttachments(m.attachments));
  if (m.actions && m.actions.length && !m.deleted_at) {
    node.append(el('div', { className: 'actions' }, ...m.actions.map((a) => {
      const b = el('button', { type: 'button', textContent: a.presentation });
      b.onclick = () => request({ type: 'click', conversation_id: m.conversation_id, message_id: m.id, value: a.value });
      return b;
    })));
  }
  if (m.reactions && m.reactions.length && !m.deleted_at) node.append(marks.renderReactions(m));
  if (m.thread && !inThread) node.append(threads.threadLink(m));
  const c = state.conversations.get(m.conversation_id);
  if (mine && !m.deleted_at && c && c.is_group) node.onmouseenter = () => marks.showReadBy(m, node);
  return node;
}

async function editMessage(m) {
  const text = prompt('Edit message', m.text);
  if (text == null || text === m.text) return;
  try {
    await request({ type: 'edit', conversation_id: m.conversation_id, message_id: m.id, text });
  } catch (e) { alert(e.message); }
}

function sendMessage(frame) {
  const { mentions, all } = mentionsIn(frame.text || '', state.conversations.get(frame.conversation_id),
    state.members.get(frame.conversation_id) || [], state.names, state.userId);
  if (mentions.length) frame.mentions = mentions;
  if (all) frame.mention_all = true;
  state.outbox.set(frame.client_id, frame);
  request(frame).then((ack) => {
    storeMessage(ack.message);
    if (ack.message.conversation_id === state.current) renderMessages(true);
  }).catch((e) => {
    if (e.code) { // refused by the server: show it, do not retry
      state.outbox.delete(frame.client_id);
      alert(`Not sent: ${e.message}`);
      renderMessages();
    } // disconnected: sent again after the reconnect
  });
}

// ---- files --------------------------------------------------------------

const tickets = new Map(); // file id → download ticket (URLs live 15 minutes)

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = r.status === 204 ? null : await r.json();
  if (!r.ok) throw Object.assign(new Error(json?.error?.message || r.statusText), { code: json?.error?.code });
  return json;
}

async function ticket(fileId) {
  const t = tickets.get(fileId);
  if (t && Date.parse(t.expires_at) - Date.now() > 60_000) return t;
  const fresh = await api('GET', `/api/v1/files/${fileId}`);
  tickets.set(fileId, fresh);
  return fresh;
}

function renderAttachments(list) {
  const box = el('div', { className: 'attachments' });
  for (const a of list) {
    if (a.preview && a.displayed) {
      const img = el('img', { className: 'preview', alt: a.name, width: a.preview.width, height: a.preview.height });
      ticket(a.file_id).then((t) => { img.src = t.preview_url; }).catch(() => { img.alt = `${a.name} (unavailable)`; });
      img.onclick = () => download(a);
      box.append(img);
    } else {
      const link = el('a', { href: '#', className: 'file', textContent: `${a.name} (${size(a.size)})` });
      link.onclick = (e) => { e.preventDefault(); download(a); };
      box.append(link);
    }
  }
  return box;
}

async function download(a) {
  try {
    const t = await ticket(a.file_id);
    window.open(t.url, '_blank', 'noopener');
  } catch (e) { alert(`Cannot download: ${e.message}`); }
}

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

async function uploadFiles(files) {
  const id = state.current;
  state.uploading = true;
  $('#send').disabled = true; // sent once every file is in
  for (const file of files) {
    $('#attached').textContent = `uploading ${file.name}…`;
    try {
      const t = await api('POST', `/api/v1/conversations/${id}/files`, {
        name: file.name, size: file.size, content_type: file.type || 'application/octet-stream',
      });
      const put = await fetch(t.upload.url, { method: 'PUT', headers: { 'content-type': t.upload.headers['Content-Type'] }, body: file });
      if (!put.ok) throw new Error(`upload refused (${put.status})`);
      await api('POST', `/api/v1/files/${t.file.id}/complete`);
      state.attached.push({ id: t.file.id, name: file.name, conversation: id });
    } catch (e) {
      alert(`${file.name}: ${e.message}`);
    }
  }
  state.uploading = false;
  renderAttached();
  $('#send').disabled = false;
}

/** Files wait for a message in the conversation they were uploaded to. */
function attachedHere() {
  return state.attached.filter((f) => f.conversation === state.current);
}

function renderAttached() {
  $('#attached').textContent = attachedHere().map((f) => f.name).join(', ');
}

// ---- composing ----------------------------------------------------------

let lastTyping = 0;

function onSubmit(e) {
  e.preventDefault();
  const text = $('#text').value;
  const files = attachedHere();
  if (!state.current || state.uploading || (!text.trim() && !files.length)) return;
  const frame = {
    type: 'send',
    conversation_id: state.current,
    client_id: crypto.randomUUID(),
    text,
  };
  if (files.length) frame.attachments = files.map((f) => ({ file_id: f.id }));
  const quote = copies.takeQuote(state.current);
  if (quote) frame.quote = quote;
  state.attached = state.attached.filter((f) => !files.includes(f));
  renderAttached();
  $('#text').value = '';
  sendMessage(frame);
  renderMessages(true);
}

function onTyping() {
  if (!state.current || Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  request({ type: 'typing', conversation_id: state.current }).catch(() => {});
}

function renderTyping() {
  const map = state.typing.get(state.current);
  const now = Date.now();
  const who = map ? [...map.entries()].filter(([, until]) => until > now).map(([u]) => nameOf(u)) : [];
  $('#typing').textContent = who.length ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
}

// ---- search and new conversations ---------------------------------------

let searchTimer = 0;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const q = $('#search').value.trim();
    const box = $('#search-results');
    if (!q) { box.hidden = true; return; }
    const answer = await request({ type: 'search', query: q, limit: 20 }).catch(() => ({ messages: [] }));
    box.replaceChildren(...answer.messages.map((m) => {
      const c = state.conversations.get(m.conversation_id);
      const li = el('li', { className: 'result' }, el('span', { textContent: m.text }), el('small', { textContent: c ? c.title : '' }));
      li.onclick = () => { box.hidden = true; $('#search').value = ''; openConversation(m.conversation_id); };
      return li;
    }));
    if (!answer.messages.length) box.replaceChildren(el('li', { className: 'result', textContent: 'Nothing found' }));
    box.hidden = false;
  }, 250);
}

async function newConversation() {
  // People: the members of your conversations (the first 20 not yet known).
  const unknown = [...state.conversations.keys()].filter((id) => !state.members.has(id)).slice(0, 20);
  await Promise.all(unknown.map(loadMembers));
  const people = [...state.names.entries()].filter(([id]) => id !== state.userId);
  const box = $('#new-conv-people');
  box.replaceChildren(el('legend', { textContent: 'People' }), ...people.map(([id, name]) => {
    const input = el('input', { type: 'checkbox', value: id });
    return el('label', {}, input, ` ${name}`);
  }));
  const dialog = $('#new-conv-dialog');
  dialog.returnValue = '';
  dialog.showModal();
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') return;
    const members = [...box.querySelectorAll('input:checked')].map((i) => i.value);
    try {
      const ack = await request({ type: 'create_conversation', title: $('#new-conv-title').value, members });
      upsertConversation(ack.conversation);
      openConversation(ack.conversation.id);
    } catch (e) { alert(e.message); }
  };
}

// ---- sign-in ------------------------------------------------------------

async function demoSignIn(name) {
  const r = await fetch('/api/v1/demo/sessions', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error?.message || r.statusText);
  state.token = body.token;
  state.demo = true;
  state.names.set(body.user_id, name);
  sessionStorage.setItem('confer.token', body.token);
  sessionStorage.setItem('confer.demoName', name);
}

function start() {
  $('#signin').hidden = true;
  $('#main').hidden = false;
  $('#demo-badge').hidden = !state.demo;
  const name = sessionStorage.getItem('confer.demoName');
  if (state.demo && name) $('#me-name').textContent = name;
  connect();
}

async function boot() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('context')) state.context = { context: params.get('context'), title: params.get('title') || params.get('context') };
  const token = params.get('token');
  if (token) {
    sessionStorage.setItem('confer.token', token);
    sessionStorage.removeItem('confer.demoName');
    // Keep the token out of the address bar (and of screenshots).
    history.replaceState(null, '', location.pathname + (state.context ? `#context=${encodeURIComponent(state.context.context)}` : ''));
  }
  state.token = sessionStorage.getItem('confer.token');
  state.demo = !!sessionStorage.getItem('confer.demoName');
  if (state.token) return start();
  const info = await fetch('/api/v1/demo').then((r) => r.json()).catch(() => ({ enabled: false }));
  $('#signin').hidden = false;
  $('#signin-form').hidden = !info.enabled;
  $('#no-token').hidden = info.enabled;
  $('#signin-form').onsubmit = async (e) => {
    e.preventDefault();
    try {
      await demoSignIn($('#signin-name').value.trim());
      start();
    } catch (err) { $('#signin-error').textContent = err.message; }
  };
}

const calls = new CallManager({
  request,
  send,
  nameOf,
  get userId() { return state.userId; },
  get conversations() { return state.conversations; },
});

$('#composer').onsubmit = onSubmit;
$('#text').oninput = onTyping;
$('#text').onkeydown = (e) => { if (e.key === 'Enter' && !e.shiftKey) onSubmit(e); };
$('#attach').onchange = (e) => { uploadFiles([...e.target.files]); e.target.value = ''; };
$('#search').oninput = onSearch;
$('#new-conv').onclick = newConversation;
$('#show-pins').onclick = marks.showPins;
marks.bind({ state, request, el, nameOf, formatText });
copies.bind({ state, request, el, nameOf, formatText });
threads.bind({ state, request, el, renderMessage, renderMessages, sendMessage, openConversation });
document.addEventListener('click', (e) => {
  if (!e.target.closest('.palette')) document.querySelectorAll('.palette').forEach((p) => p.remove());
});
$('#call-audio').onclick = () => calls.start(state.current, 'audio');
$('#call-video').onclick = () => calls.start(state.current, 'video');
$('#messages').onscroll = async () => {
  const box = $('#messages');
  if (box.scrollTop > 0 || !state.current) return;
  const map = state.messages.get(state.current);
  const oldest = map && map.size ? Math.min(...map.keys()) : 0;
  if (oldest > 1 && !box.dataset.loading) {
    box.dataset.loading = '1';
    const height = box.scrollHeight;
    await loadHistory(state.current, { before: oldest }).finally(() => { delete box.dataset.loading; });
    box.scrollTop = box.scrollHeight - height;
  }
};
document.addEventListener('visibilitychange', markRead);

// For tests and for the embedding application's scripts.
window.confer = { state, calls, openConversation, request };

boot();
