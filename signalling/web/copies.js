// Quote and forward in the web client (docs/protocol.md, "Quote and
// forward"): a quoted message shows as a block above the reply's text, a
// forward names where it came from; the composer holds the quote being
// written, and a dialog picks where to forward. The page hands over what
// these need with `bind`.

let app;
const $ = (sel) => document.querySelector(sel);

/** Hands over the page's state and helpers: `state`, `request`, `el`,
 * `nameOf`, `formatText`, `openConversation`. */
export function bind(page) {
  app = page;
  $('#quoting-cancel').onclick = () => { app.state.quoting = null; renderQuoting(); };
}

function authorName(author) {
  return author.kind === 'app' ? 'Bot' : app.nameOf(author.user_id);
}

/** The quote block of a message that quotes another. */
export function renderQuote(m) {
  const q = m.quote;
  const block = app.el('blockquote', { className: 'quote', title: 'Show the quoted message' },
    app.el('span', { className: 'author', textContent: authorName(q.author) }),
    app.el('div', {}, ...app.formatText(q.text || (q.attachments ? 'files' : ''))));
  block.onclick = () => {
    const node = document.querySelector(`#messages .msg[data-seq="${q.seq}"]`);
    if (node) node.scrollIntoView({ block: 'center' });
  };
  return block;
}

/** The line that says where a forwarded message came from. */
export function renderForwarded(m) {
  return app.el('div', { className: 'forwarded', textContent: `Forwarded from ${authorName(m.forwarded.author)}` });
}

/** Starts quoting `m` in the composer. */
export function startQuote(m) {
  app.state.quoting = m;
  renderQuoting();
  $('#text').focus();
}

/** The quote the composer holds, for the message being sent (and done). */
export function takeQuote(conversationId) {
  const m = app.state.quoting;
  if (!m || m.conversation_id !== conversationId) return null;
  app.state.quoting = null;
  renderQuoting();
  return m.id;
}

export function renderQuoting() {
  const m = app.state.quoting;
  const bar = $('#quoting');
  bar.hidden = !m || m.conversation_id !== app.state.current;
  if (!bar.hidden) $('#quoting-text').textContent = `Quoting ${authorName(m.author)}: ${(m.text || '').slice(0, 80)}`;
}

/** Asks where to forward `m`, then forwards it there. */
export function forward(m) {
  const select = $('#forward-to');
  const targets = [...app.state.conversations.values()].filter((c) => c.displayed !== false);
  select.replaceChildren(...targets.map((c) => app.el('option', { value: c.id, textContent: c.title })));
  const dialog = $('#forward-dialog');
  dialog.returnValue = '';
  dialog.showModal();
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') return;
    try {
      await app.request({
        type: 'forward', conversation_id: select.value, client_id: crypto.randomUUID(),
        from_conversation_id: m.conversation_id, message_id: m.id,
      });
    } catch (e) { alert(e.message); }
  };
}
