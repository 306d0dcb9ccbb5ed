// The light formatting of message text (docs/protocol.md, "Formatting"):
// *bold*, _italic_, `code`, and links (http, https, mailto). The result is
// DOM nodes built with textContent and element properties — never HTML
// parsed from a message — so markup in a message shows as the text it is,
// and a link can only point where its scheme allows.

const LINK = /\b(?:https?:\/\/|mailto:)[^\s<>"]+/iy;
const SAFE_SCHEMES = ['http:', 'https:', 'mailto:'];
// Punctuation that ends a sentence rather than the link.
const TRAILING = /[.,;:!?)\]'"»]+$/;
const MARKS = { '*': 'strong', _: 'em', '`': 'code' };

// Whether `c` may stand next to a marker: start or end of text, space or
// punctuation (so that snake_case_names and 2*3*4 stay as they are).
const boundary = (c) => c === undefined || /[\s.,;:!?()[\]{}'"«»\-—]/.test(c);

/// A link element for `raw`, or null when it is not a safe URL.
function link(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    return null;
  }
  if (!SAFE_SCHEMES.includes(url.protocol)) return null;
  const a = document.createElement('a');
  a.href = url.href;
  a.textContent = raw;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  return a;
}

/// The nodes that show `text` with its formatting.
export function formatText(text) {
  const out = [];
  let plain = '';
  const flush = () => {
    if (plain) out.push(document.createTextNode(plain));
    plain = '';
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    // A link, without the punctuation that ends its sentence.
    if (boundary(text[i - 1]) && (c === 'h' || c === 'H' || c === 'm' || c === 'M')) {
      LINK.lastIndex = i;
      const found = LINK.exec(text);
      if (found) {
        const raw = found[0].replace(TRAILING, '');
        const a = raw.length > 'mailto:'.length ? link(raw) : null;
        if (a) {
          flush();
          out.push(a);
          i += raw.length;
          continue;
        }
      }
    }
    // A marked span: the closing marker on the same line, not right after
    // the opening one, followed by a boundary; no nesting.
    const tag = MARKS[c];
    if (tag && boundary(text[i - 1]) && text[i + 1] && !/\s/.test(text[i + 1])) {
      let end = text.indexOf(c, i + 1);
      while (end !== -1 && !(boundary(text[end + 1]) && !/\s/.test(text[end - 1]))) {
        end = text.indexOf(c, end + 1);
      }
      const inner = end === -1 ? '' : text.slice(i + 1, end);
      if (end !== -1 && !inner.includes('\n')) {
        flush();
        const node = document.createElement(tag);
        node.textContent = inner;
        out.push(node);
        i = end + 1;
        continue;
      }
    }
    plain += c;
    i += 1;
  }
  flush();
  return out;
}
