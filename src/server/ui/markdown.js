// Markdown for chat answers, safe by construction: the text is parsed into a small tree of known
// elements whose text is only ever set as text (textContent / createTextNode), never as HTML, so
// nothing a model writes (<script>, <img onerror=...>, javascript: links) becomes markup.
//
// The subset chat models use: fenced code blocks (``` or ~~~, an unclosed one runs to the end, as
// while streaming), ATX headings, lists (- * + and 1.), block quotes, horizontal rules, GFM tables,
// paragraphs (single newlines kept as line breaks); inline code, **bold**, *italic*, ~~strike~~,
// [links](http://...) and <http://...>. Images are shown as links: the page loads nothing remote.
// A leading <think>...</think> (reasoning models) becomes its own node.
//
// A node is {tag, children} or {tag, text} (text leaves have tag "#text"); links carry href,
// code blocks carry lang.

const text = (t) => ({ tag: '#text', text: t });

// http(s) and mailto only: anything else (javascript:, data:, relative paths) stays plain text.
export function safeHref(url) {
  const u = url.trim();
  return /^(https?:\/\/|mailto:)[^\s]+$/i.test(u) ? u : null;
}

// ---- inline ----------------------------------------------------------------------------------

// Emphasis delimiters: the tag each makes and whether it may open/close inside a word.
const EMPHASIS = [
  ['**', 'strong'], ['__', 'strong'], ['~~', 'del'], ['*', 'em'], ['_', 'em'],
];

export function parseInline(src) {
  const out = [];
  let buf = '';
  const flush = () => { if (buf) { out.push(text(buf)); buf = ''; } };
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === '\\' && i + 1 < src.length && /[\\`*_~[\]()<>#+\-.!|]/.test(src[i + 1])) {
      buf += src[i + 1];
      i += 2;
      continue;
    }
    if (c === '`') {
      let n = 1;
      while (src[i + n] === '`') n++;
      const fence = '`'.repeat(n);
      const end = src.indexOf(fence, i + n);
      if (end > 0) {
        flush();
        let code = src.slice(i + n, end);
        if (/^ .* $/.test(code)) code = code.slice(1, -1);
        out.push({ tag: 'code', children: [text(code)] });
        i = end + n;
        continue;
      }
      buf += fence;
      i += n;
      continue;
    }
    if (c === '!' && src[i + 1] === '[') {  // an image: its alt text as a link
      const link = parseLink(src, i + 1);
      if (link) {
        flush();
        out.push(link.node);
        i = link.end;
        continue;
      }
    }
    if (c === '[') {
      const link = parseLink(src, i);
      if (link) {
        flush();
        out.push(link.node);
        i = link.end;
        continue;
      }
    }
    if (c === '<') {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(src.slice(i));
      if (m) {
        flush();
        out.push({ tag: 'a', href: m[1], children: [text(m[1])] });
        i += m[0].length;
        continue;
      }
    }
    const em = EMPHASIS.find(([d]) => src.startsWith(d, i));
    if (em) {
      const [d, tag] = em;
      const inner = i + d.length;
      // Opens only before a non-space; `_` not inside a word (snake_case stays as is).
      const opens = inner < src.length && !/\s/.test(src[inner]) &&
                    !(d[0] === '_' && i > 0 && /\w/.test(src[i - 1]));
      const close = opens ? findClose(src, d, inner) : -1;
      if (close > 0) {
        flush();
        out.push({ tag, children: parseInline(src.slice(inner, close)) });
        i = close + d.length;
        continue;
      }
      buf += d;
      i += d.length;
      continue;
    }
    buf += c;
    i++;
  }
  flush();
  return out;
}

// The closing delimiter `d` after `from`: preceded by a non-space, and for `_` not followed by a word
// character; code spans on the way are skipped whole. -1 when there is none.
function findClose(src, d, from) {
  for (let j = from + 1; j < src.length; j++) {
    if (src[j] === '`') {
      let n = 1;
      while (src[j + n] === '`') n++;
      const end = src.indexOf('`'.repeat(n), j + n);
      if (end > 0) j = end + n - 1;
      else j += n - 1;
      continue;
    }
    if (src[j] === '\\') { j++; continue; }
    if (!src.startsWith(d, j) || /\s/.test(src[j - 1])) continue;
    if (d.length === 1 && src[j + 1] === d) { j++; continue; }  // `*` is not half of `**`
    if (d[0] === '_' && /\w/.test(src[j + d.length] || '')) continue;
    return j;
  }
  return -1;
}

// [text](url) at `i`: {node, end}, or null when it is not a link. Unsafe URLs leave the text.
function parseLink(src, i) {
  let depth = 0, j = i;
  for (; j < src.length; j++) {
    if (src[j] === '[') depth++;
    else if (src[j] === ']' && --depth === 0) break;
  }
  if (j >= src.length || src[j + 1] !== '(') return null;
  const close = src.indexOf(')', j + 2);
  if (close < 0) return null;
  const label = src.slice(i + 1, j);
  const href = safeHref(src.slice(j + 2, close).split(/\s+"/)[0]);
  const children = parseInline(label || src.slice(j + 2, close));
  const node = href ? { tag: 'a', href, children } : { tag: 'span', children };
  return { node, end: close + 1 };
}

// ---- blocks ----------------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^(\s*)([-*+])\s+(.*)$/;
const ORDERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;

const isBlank = (l) => /^\s*$/.test(l);
const cells = (row) => row.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((c) => c.trim());

export function parseMarkdown(src) {
  const blocks = [];
  let rest = src.replace(/\r\n?/g, '\n');
  const think = /^\s*<think>([\s\S]*?)(<\/think>|$)/.exec(rest);
  if (think) {
    blocks.push({ tag: 'think', done: think[2] !== '', children: [text(think[1].trim())] });
    rest = rest.slice(think[0].length);
  }
  parseBlocks(rest.split('\n'), blocks);
  return blocks;
}

function parseBlocks(lines, blocks) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) { i++; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) body.push(lines[i++]);
      i++;  // the closing fence (or past the end)
      blocks.push({ tag: 'pre', lang: m[2] || '', children: [text(body.join('\n'))] });
      continue;
    }
    if ((m = HEADING.exec(line))) {
      blocks.push({ tag: 'h' + m[1].length, children: parseInline(m[2]) });
      i++;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push({ tag: 'hr', children: [] });
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i++; }
      const inner = [];
      parseBlocks(body, inner);
      blocks.push({ tag: 'blockquote', children: inner });
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      i = parseList(lines, i, blocks);
      continue;
    }
    if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes('-')) {
      const head = cells(line);
      const rows = [];
      i += 2;
      while (i < lines.length && lines[i].includes('|') && !isBlank(lines[i])) rows.push(cells(lines[i++]));
      const row = (r, tag) => ({ tag: 'tr', children: head.map((_, k) => ({ tag, children: parseInline(r[k] || '') })) });
      blocks.push({ tag: 'table', children: [
        { tag: 'thead', children: [row(head, 'th')] },
        { tag: 'tbody', children: rows.map((r) => row(r, 'td')) },
      ] });
      continue;
    }
    const para = [];
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) para.push(lines[i++].trim());
    if (para.length === 0) para.push(lines[i++].trim());  // a line no block rule took
    const children = [];
    para.forEach((l, k) => {
      if (k > 0) children.push({ tag: 'br', children: [] });
      children.push(...parseInline(l));
    });
    blocks.push({ tag: 'p', children });
  }
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
         BULLET.test(line) || ORDERED.test(line);
}

// A list from line `i`: items at its indentation, deeper-indented lines nested inside the item.
// Returns the index of the first line after it.
function parseList(lines, i, blocks) {
  const first = BULLET.exec(lines[i]) || ORDERED.exec(lines[i]);
  const ordered = !BULLET.test(lines[i]);
  const indent = first[1].length;
  const list = { tag: ordered ? 'ol' : 'ul', children: [] };
  if (ordered && first[2] !== '1') list.start = Number(first[2]);
  while (i < lines.length) {
    const m = ordered ? ORDERED.exec(lines[i]) : BULLET.exec(lines[i]);
    if (!m || m[1].length !== indent) break;
    const body = [m[3]];
    const content = lines[i].length - m[3].length;  // where the item's text starts
    i++;
    // The item's further lines: deeper-indented ones, and blank lines followed by such.
    while (i < lines.length) {
      const l = lines[i];
      const deeper = l.length - l.trimStart().length > indent;
      if (!isBlank(l) && deeper) { body.push(l.slice(Math.min(content, l.length - l.trimStart().length))); i++; continue; }
      if (isBlank(l) && i + 1 < lines.length && lines[i + 1].length - lines[i + 1].trimStart().length > indent &&
          !isBlank(lines[i + 1])) { body.push(''); i++; continue; }
      if (!isBlank(l) && !startsBlock(l) && body.length === 1) { body.push(l.trim()); i++; continue; }  // lazy continuation
      break;
    }
    const inner = [];
    parseBlocks(body, inner);
    // A tight item: its one paragraph's content directly in the <li>.
    const item = inner.length >= 1 && inner[0].tag === 'p' ? [...inner[0].children, ...inner.slice(1)] : inner;
    list.children.push({ tag: 'li', children: item });
    while (i < lines.length && isBlank(lines[i]) && i + 1 < lines.length &&
           (ordered ? ORDERED : BULLET).test(lines[i + 1]) &&
           (ordered ? ORDERED : BULLET).exec(lines[i + 1])[1].length === indent) i++;  // loose lists
  }
  blocks.push(list);
  return i;
}

// ---- DOM -------------------------------------------------------------------------------------

// The tree as DOM nodes of `doc`: every string goes in as text.
export function toDom(nodes, doc) {
  const frag = doc.createDocumentFragment();
  for (const n of nodes) frag.appendChild(nodeToDom(n, doc));
  return frag;
}

function nodeToDom(n, doc) {
  if (n.tag === '#text') return doc.createTextNode(n.text);
  if (n.tag === 'think') {
    const d = doc.createElement('details');
    d.className = 'think';
    if (!n.done) d.open = true;
    const s = doc.createElement('summary');
    s.textContent = n.done ? 'Reasoning' : 'Reasoning…';
    d.appendChild(s);
    const body = doc.createElement('div');
    body.textContent = n.children[0].text;
    d.appendChild(body);
    return d;
  }
  if (n.tag === 'pre') {
    const pre = doc.createElement('pre');
    const code = doc.createElement('code');
    if (n.lang) {
      code.dataset.lang = n.lang;
      pre.dataset.lang = n.lang;
    }
    code.textContent = n.children[0].text;
    pre.appendChild(code);
    return pre;
  }
  const el = doc.createElement(n.tag);
  if (n.tag === 'a') {
    el.href = n.href;
    el.target = '_blank';
    el.rel = 'noopener noreferrer nofollow';
  }
  if (n.start !== undefined) el.start = n.start;
  for (const c of n.children) el.appendChild(nodeToDom(c, doc));
  return el;
}

export function renderMarkdown(src, doc) {
  return toDom(parseMarkdown(src), doc);
}
