// Tiny DOM helpers: build elements without innerHTML, so text from the API is
// never parsed as markup.

/** h('a#id.card.big', {href: '/x', onclick}, 'text', child) → an element. */
export function h(spec, attrs, ...children) {
  const tag = spec.match(/^[a-z][a-z0-9]*/)?.[0] || 'div';
  const el = document.createElement(tag);
  const id = spec.match(/#([\w-]+)/);
  if (id) el.id = id[1];
  const classes = [...spec.matchAll(/\.([\w-]+)/g)].map((m) => m[1]);
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className += (el.className ? ' ' : '') + value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Announces `text` to screen readers through the page's live region. */
export function announce(text) {
  const region = document.getElementById('announce');
  if (region) region.textContent = text;
}
