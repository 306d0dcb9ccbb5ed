// Reactions, pins and read-by in the web client: what members add to
// messages besides replies (docs/protocol.md, "Reactions, pins and
// read-by"). The page hands over what these need with `bind`.

let app;
const $ = (sel) => document.querySelector(sel);

/** Hands over the page's state and helpers: `state`, `request`, `el`,
 * `nameOf`, `formatText`. */
export function bind(page) { app = page; }

const PALETTE = ['👍', '❤️', '😂', '🎉', '👀', '✅'];

export function renderReactions(m) {
  return app.el('div', { className: 'reactions' }, ...m.reactions.map((r) => {
    const mine = r.users.includes(app.state.userId);
    const chip = app.el('button', {
      type: 'button',
      className: `reaction${mine ? ' mine' : ''}`,
      textContent: `${r.emoji} ${r.count}`,
      title: r.users.map(app.nameOf).join(', ') + (r.count > r.users.length ? ` and ${r.count - r.users.length} more` : ''),
    });
    chip.dataset.emoji = r.emoji;
    chip.onclick = () => react(m, r.emoji, mine);
    return chip;
  }));
}

function react(m, emoji, remove) {
  app.request({ type: 'react', conversation_id: m.conversation_id, message_id: m.id, emoji, remove })
    .catch((e) => alert(e.message));
}

export function showPalette(node, m) {
  document.querySelectorAll('.palette').forEach((p) => p.remove());
  const palette = app.el('div', { className: 'palette' }, ...PALETTE.map((emoji) => {
    const b = app.el('button', { type: 'button', textContent: emoji });
    b.onclick = () => { palette.remove(); react(m, emoji, false); };
    return b;
  }));
  node.append(palette);
}

export function applyReaction(ev) {
  const m = (app.state.messages.get(ev.conversation_id) || new Map()).get(ev.seq)
    || (app.state.replies.get(ev.conversation_id) || new Map()).get(ev.seq);
  if (!m) return;
  const list = m.reactions || (m.reactions = []);
  let r = list.find((x) => x.emoji === ev.emoji);
  if (!r) { r = { emoji: ev.emoji, count: 0, users: [] }; list.push(r); }
  r.count = ev.count;
  r.users = r.users.filter((u) => u !== ev.user_id);
  if (ev.added) r.users.push(ev.user_id);
  if (!r.count) list.splice(list.indexOf(r), 1);
}

// Who has read one of your messages in a group: asked when you point at
// it, shown as its tooltip.
export async function showReadBy(m, node) {
  try {
    const answer = await app.request({ type: 'read_by', conversation_id: m.conversation_id, message_id: m.id });
    const names = answer.users.map(app.nameOf);
    node.title = names.length ? `Read by ${names.join(', ')}${answer.truncated ? ' and more' : ''}` : 'Not read yet';
    node.dataset.readBy = String(names.length);
  } catch (e) { /* offline: no tooltip */ }
}

export async function loadPins(id) {
  const answer = await app.request({ type: 'pins', conversation_id: id });
  app.state.pins.set(id, new Set(answer.messages.map((m) => m.seq)));
  return answer.messages;
}

export async function showPins() {
  const list = $('#pins-list');
  const messages = await loadPins(app.state.current);
  list.replaceChildren(...messages.map((m) => {
    const item = app.el('li', { className: 'pinned-item' },
      app.el('span', { className: 'author', textContent: m.author.kind === 'app' ? 'Bot' : app.nameOf(m.author.user_id) }),
      ' ', ...app.formatText(m.text || ''));
    item.onclick = () => {
      $('#pins-dialog').close();
      const node = document.querySelector(`#messages .msg[data-seq="${m.seq}"]`);
      if (node) node.scrollIntoView({ block: 'center' });
    };
    return item;
  }));
  $('#pins-dialog').showModal();
}

