// Small DOM helpers. Text always goes in as text nodes or textContent: nothing from the
// server, a model or a user is ever parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
}

function add(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) add(node, child);
    else node.append(child); // a string becomes a text node
  }
}

/** An HTML element: `el("p", {class: "x", "data-testid": "y"}, "text", child)`. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  apply(node, props);
  add(node, children);
  return node;
}

/** An SVG element, with attributes as given. */
export function svg(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, props);
  add(node, children);
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

/** Text cut to `max` characters, saying how much was left out. */
export function clip(text, max) {
  const s = String(text ?? "");
  if (s.length <= max) return s;
  return `${s.slice(0, max)}\n… (${(s.length - max).toLocaleString()} more characters)`;
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new DOMException("Aborted", "AbortError"));
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** "3 min ago", "yesterday", or a date, for a time as noroshi writes it (ISO 8601). */
export function ago(iso) {
  const then = new Date(iso);
  const seconds = (Date.now() - then.getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  const fmt = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  if (seconds < 60) return fmt.format(-Math.max(0, Math.round(seconds)), "second");
  if (seconds < 3600) return fmt.format(-Math.round(seconds / 60), "minute");
  if (seconds < 86400) return fmt.format(-Math.round(seconds / 3600), "hour");
  if (seconds < 86400 * 7) return fmt.format(-Math.round(seconds / 86400), "day");
  return then.toLocaleDateString();
}
