// Mentions in the web client (docs/protocol.md, "Mentions"): who a text
// mentions when it is sent, and whether a message mentions you.

/** Whether message `m` mentions user `me` (or `@all`). */
export function mentionsOf(m, me) {
  return Boolean(m.mention_all || (m.mentions || []).includes(me));
}

/** The people `text` mentions in conversation `c`: `@name` of one of its
 * `members` (`names`: id → name; not `me`), and `@all` in a group. */
export function mentionsIn(text, c, members, names, me) {
  const mentions = members.filter((u) => u !== me && names.has(u) && text.includes(`@${names.get(u)}`));
  const all = Boolean(c && c.is_group && !c.all_users && /(^|\s)@all\b/.test(text));
  return { mentions, all };
}
