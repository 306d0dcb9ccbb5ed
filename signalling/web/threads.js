// Threads in the web client (docs/protocol.md, "Threads"): the
// conversation shows only messages that are not replies, each root with a
// link to its thread ("2 replies · 1 new"); the thread opens in a panel
// beside it with its own history, composer and read mark. The page hands
// over what these need with `bind`.

let app;
const $ = (sel) => document.querySelector(sel);

/** Hands over the page's state and helpers: `state`, `request`, `el`,
 * `renderMessage`, `renderMessages`, `sendMessage`, `openConversation`. */
export function bind(page) {
  app = page;
  $('#thread-close').onclick = closeThread;
  $('#thread-form').onsubmit = onReply;
  $('#thread-text').onkeydown = (e) => { if (e.key === 'Enter' && !e.shiftKey) onReply(e); };
  $('#show-threads').onclick = showThreads;
  $('#show-mentions').onclick = showMentions;
}

function repliesOf(conversationId) {
  let map = app.state.replies.get(conversationId);
  if (!map) { map = new Map(); app.state.replies.set(conversationId, map); }
  return map;
}

function open(m) {
  const t = app.state.thread;
  return t && t.conversation_id === m.conversation_id && t.rootSeq === m.thread_seq;
}

/** Keeps a reply, and keeps its root's thread summary up to date. */
export function storeReply(m) {
  const replies = repliesOf(m.conversation_id);
  const before = replies.get(m.seq);
  replies.set(m.seq, m);
  app.state.outbox.delete(m.client_id);
  const root = (app.state.messages.get(m.conversation_id) || new Map()).get(m.thread_seq);
  if (root) {
    const t = root.thread || (root.thread = { replies: 0, last_reply_seq: 0, last_reply_at: m.created_at, unread: 0 });
    const mine = m.author.kind === 'user' && m.author.user_id === app.state.userId;
    if (!before && !m.deleted_at) {
      t.replies += 1;
      if (m.seq > t.last_reply_seq) { t.last_reply_seq = m.seq; t.last_reply_at = m.created_at; }
      if (!mine && !open(m)) t.unread += 1;
    } else if (before && !before.deleted_at && m.deleted_at) {
      t.replies = Math.max(0, t.replies - 1);
    }
    if (!t.replies) delete root.thread;
  }
  if (open(m)) { renderThread(); markThreadRead(); }
}

/** The line under a root that opens its thread. */
export function threadLink(m) {
  const t = m.thread;
  const when = new Date(t.last_reply_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const link = app.el('button', {
    type: 'button',
    className: `thread-link${t.unread ? ' unread-thread' : ''}`,
    textContent: `${t.replies} ${t.replies === 1 ? 'reply' : 'replies'} · last ${when}${t.unread ? ` · ${t.unread} new` : ''}`,
  });
  link.onclick = () => openThread(m);
  return link;
}

/** Opens the thread of root `m` in the panel. */
export async function openThread(m) {
  app.state.thread = { conversation_id: m.conversation_id, rootSeq: m.seq, rootId: m.id };
  $('#thread').hidden = false;
  const answer = await app.request({ type: 'history', conversation_id: m.conversation_id, thread_id: m.id, after: 0, limit: 200 });
  for (const r of answer.messages) repliesOf(m.conversation_id).set(r.seq, r);
  if (m.thread) m.thread.unread = 0;
  renderThread();
  markThreadRead();
  app.renderMessages();
  $('#thread-text').focus();
}

/** Draws the open thread again (a reaction or pin changed in it). */
export function refresh() { renderThread(); }

export function closeThread() {
  app.state.thread = null;
  $('#thread').hidden = true;
}

function renderThread() {
  const t = app.state.thread;
  if (!t) return;
  const root = (app.state.messages.get(t.conversation_id) || new Map()).get(t.rootSeq);
  const replies = [...repliesOf(t.conversation_id).values()]
    .filter((r) => r.thread_seq === t.rootSeq)
    .sort((a, b) => a.seq - b.seq);
  const nodes = [];
  if (root) nodes.push(app.renderMessage(root, { inThread: true }), app.el('div', { className: 'thread-rule', textContent: `${replies.filter((r) => !r.deleted_at).length} replies` }));
  for (const r of replies) nodes.push(app.renderMessage(r, { inThread: true }));
  for (const p of app.state.outbox.values()) {
    if (p.thread_id === t.rootId) nodes.push(app.el('div', { className: 'msg mine pending' }, app.el('div', { className: 'text', textContent: p.text })));
  }
  const box = $('#thread-messages');
  box.replaceChildren(...nodes);
  box.scrollTop = box.scrollHeight;
}

function markThreadRead() {
  const t = app.state.thread;
  if (!t || document.visibilityState !== 'visible') return;
  const seqs = [...repliesOf(t.conversation_id).values()].filter((r) => r.thread_seq === t.rootSeq).map((r) => r.seq);
  if (!seqs.length) return;
  const seq = Math.max(...seqs);
  if (t.readSent >= seq) return;
  t.readSent = seq;
  app.request({ type: 'read', conversation_id: t.conversation_id, thread_id: t.rootId, seq }).catch(() => { t.readSent = 0; });
}

function onReply(e) {
  e.preventDefault();
  const t = app.state.thread;
  const text = $('#thread-text').value;
  if (!t || !text.trim()) return;
  $('#thread-text').value = '';
  app.sendMessage({ type: 'send', conversation_id: t.conversation_id, client_id: crypto.randomUUID(), text, thread_id: t.rootId });
  renderThread();
}

/** The threads you follow, in the sidebar's result list. */
async function showThreads() {
  const box = $('#search-results');
  const answer = await app.request({ type: 'threads' }).catch(() => ({ threads: [] }));
  box.replaceChildren(...answer.threads.map((m) => {
    const c = app.state.conversations.get(m.conversation_id);
    const li = app.el('li', { className: 'result thread-result' },
      app.el('span', { textContent: m.text }),
      app.el('small', { textContent: `${c ? c.title : ''} · ${m.thread.replies} replies${m.thread.unread ? ` · ${m.thread.unread} new` : ''}` }));
    li.onclick = async () => {
      box.hidden = true;
      await app.openConversation(m.conversation_id);
      const root = (app.state.messages.get(m.conversation_id) || new Map()).get(m.seq) || m;
      await openThread(root);
    };
    return li;
  }));
  if (!answer.threads.length) box.replaceChildren(app.el('li', { className: 'result', textContent: 'No threads followed yet' }));
  box.hidden = false;
}

/** The messages that mention you, in the sidebar's result list. */
async function showMentions() {
  const box = $('#search-results');
  const answer = await app.request({ type: 'mentions', limit: 50 }).catch(() => ({ messages: [] }));
  box.replaceChildren(...answer.messages.map((m) => {
    const c = app.state.conversations.get(m.conversation_id);
    const li = app.el('li', { className: 'result mention-result' },
      app.el('span', { textContent: m.text }),
      app.el('small', { textContent: c ? c.title : '' }));
    li.onclick = async () => {
      box.hidden = true;
      await app.openConversation(m.conversation_id);
      if (m.thread_id) {
        const root = (app.state.messages.get(m.conversation_id) || new Map()).get(m.thread_seq);
        if (root) await openThread(root);
      }
    };
    return li;
  }));
  if (!answer.messages.length) box.replaceChildren(app.el('li', { className: 'result', textContent: 'No mentions of you' }));
  box.hidden = false;
}
