// Agent text as light formatting, built from DOM nodes and never parsed as
// HTML: fenced code blocks, paragraphs, bullet and numbered lists, headings
// (shown as bold lines), `code`, **bold** and [links](https://…) whose target is
// http(s). Anything else stays plain text, so an agent's output can never
// become markup or script in the page.

import { h } from './dom.js';

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\[[^\]\n]+\]\((https?:\/\/[^)\s]+)\))/g;

/** Inline spans of one line or paragraph: text nodes, <code>, <strong>, <a>. */
export function inline(text) {
  const out = [];
  let at = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > at) out.push(text.slice(at, m.index));
    if (m[1]) out.push(h('code', m[1].slice(1, -1)));
    else if (m[2]) out.push(h('strong', m[2].slice(2, -2)));
    else out.push(h('a', { href: m[4], target: '_blank', rel: 'noopener noreferrer' }, m[3].slice(1, m[3].indexOf(']('))));
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

const BULLET = /^\s*[-*+]\s+/;
const NUMBERED = /^\s*\d+[.)]\s+/;

const HEADING = /^#{1,6}\s+(.*)$/;
const typeOf = (l) => (BULLET.test(l) ? 'ul' : NUMBERED.test(l) ? 'ol' : HEADING.test(l) ? 'h' : 'p');

/** A paragraph's lines as blocks: runs of list items, headings, plain lines. */
function blocks(lines) {
  const out = [];
  for (let i = 0; i < lines.length;) {
    const type = typeOf(lines[i]);
    let j = i + 1;
    while (j < lines.length && type !== 'h' && typeOf(lines[j]) === type) j++;
    const run = lines.slice(i, j);
    if (type === 'ul') out.push(h('ul', run.map((l) => h('li', inline(l.replace(BULLET, ''))))));
    else if (type === 'ol') out.push(h('ol', run.map((l) => h('li', inline(l.replace(NUMBERED, ''))))));
    else if (type === 'h') out.push(h('p.md-heading', h('strong', inline(run[0].match(HEADING)[1]))));
    else out.push(h('p', inline(run.join('\n'))));
    i = j;
  }
  return out;
}

/** A `div.md` holding `text` formatted. */
export function markdown(text) {
  const root = h('div.md');
  const lines = String(text ?? '').split('\n');
  let para = [];
  const flush = () => {
    if (para.length) root.append(...blocks(para));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const fence = lines[i].match(/^\s*```\s*([\w+-]*)\s*$/);
    if (fence) {
      flush();
      const code = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i++]);
      root.append(h('pre', h('code', { dataset: fence[1] ? { lang: fence[1] } : undefined }, code.join('\n'))));
      continue;
    }
    if (!lines[i].trim()) flush();
    else para.push(lines[i]);
  }
  flush();
  return root;
}
