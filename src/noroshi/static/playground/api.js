// Every request the page makes goes through here: the key as `Authorization: Bearer`, errors
// in noroshi's one envelope turned into ApiError, and server-sent events read from a fetch
// body (EventSource cannot send a key or a Last-Event-ID of our choosing).

const KEY_STORE = "noroshi.apiKey";
const REMEMBER_STORE = "noroshi.rememberKey"; // "1": the user asked to keep the key
const MAX_EVENT_CHARS = 16 * 1024 * 1024; // a line longer than this is not an event we want

/** Web storage that never throws (private windows, storage off, quota). */
function storage(area) {
  return {
    get(name) {
      try { return area().getItem(name); } catch { return null; }
    },
    set(name, value) {
      try { area().setItem(name, value); return true; } catch { return false; }
    },
    remove(name) {
      try { area().removeItem(name); } catch { /* nothing to do */ }
    },
    getJSON(name) {
      const raw = this.get(name);
      if (!raw) return null;
      try { return JSON.parse(raw); } catch { return null; }
    },
    setJSON(name, value) {
      return this.set(name, JSON.stringify(value));
    },
  };
}

/** What outlives the tab: the page's choices, never a key the user did not ask to keep. */
export const store = storage(() => localStorage);
/** What lasts as long as the tab: the key, unless it is remembered. */
const tabStore = storage(() => sessionStorage);

let remembered = store.get(REMEMBER_STORE) === "1";
let apiKey = (remembered && store.get(KEY_STORE)) || tabStore.get(KEY_STORE)
  || store.get(KEY_STORE) || ""; // an older page kept every key: this tab keeps it, not the disk
saveKey();

/** The key in this tab's storage, and in localStorage only while the user wants it kept. */
function saveKey() {
  for (const place of remembered ? [tabStore, store] : [tabStore]) {
    if (apiKey) place.set(KEY_STORE, apiKey);
    else place.remove(KEY_STORE);
  }
  if (!remembered) store.remove(KEY_STORE);
}

export function getKey() {
  return apiKey;
}

export function setKey(value) {
  apiKey = value.trim();
  saveKey();
}

export function isKeyRemembered() {
  return remembered;
}

/** Keep the key across tabs and restarts (localStorage), or only in this tab. */
export function rememberKey(on) {
  remembered = on;
  if (on) store.set(REMEMBER_STORE, "1");
  else store.remove(REMEMBER_STORE);
  saveKey();
}

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }

  /** 401 (no or a bad key) or 403 (a key without the right). */
  get auth() {
    return this.status === 401 || this.status === 403;
  }
}

export function isAbort(err) {
  return err?.name === "AbortError";
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  let code = null;
  try {
    const body = await res.json();
    if (body && typeof body.error === "object" && body.error) {
      message = body.error.message || message;
      code = body.error.code ?? null;
    }
  } catch { /* not JSON: keep the status line */ }
  return new ApiError(res.status, message, code);
}

/** fetch, with the key; a non-2xx answer throws ApiError. `path` is relative to the page. */
export async function call(path, { method = "GET", body, signal, headers } = {}) {
  const h = new Headers(headers || {});
  if (apiKey) h.set("authorization", `Bearer ${apiKey}`);
  const init = { method, headers: h, signal, cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    h.set("content-type", "application/json");
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, `Could not reach the server (${err.message}).`, "network");
  }
  if (!res.ok) throw await errorOf(res);
  return res;
}

export async function getJSON(path, options) {
  const res = await call(path, options);
  return res.json();
}

/**
 * The events of a server-sent event stream, as `{event, data, id}` (id: the `id:` field of that
 * event, or null). Leaving the loop early cancels the body, which closes the connection.
 */
export async function* events(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  let event = "";
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let start = 0;
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n", start)) {
        let line = buffer.slice(start, nl);
        start = nl + 1;
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length || event) {
            yield { event: event || "message", data: data.join("\n"), id };
          }
          data = [];
          event = "";
          id = null;
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") data.push(val);
        else if (field === "event") event = val;
        else if (field === "id") id = val;
      }
      buffer = buffer.slice(start);
      if (buffer.length > MAX_EVENT_CHARS) throw new ApiError(0, "An event was too large.");
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Prometheus text format to `[{name, labels, value}]`; comments and bad lines skipped. */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      for (const l of m[2].matchAll(label)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    const value = Number(m[3]);
    if (!Number.isNaN(value)) samples.push({ name: m[1], labels, value });
  }
  return samples;
}
