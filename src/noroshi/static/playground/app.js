// noroshi's playground and console: the page at `/`. Plain ES modules, no build step, nothing
// loaded from anywhere but this server.

import { getJSON, getKey, isKeyRemembered, rememberKey, setKey } from "./api.js";
import { Chat } from "./chat.js";
import { Console } from "./console.js";
import { $, debounce } from "./dom.js";

const keyInput = $("#api-key");
const keyShow = $("#key-show");
const keyRemember = $("#key-remember");
const authState = $("#auth-state");
const tabs = [$("#tab-chat"), $("#tab-console")];

let health = null;

const chat = new Chat($("#panel-chat"), {});
const consoleView = new Console($("#panel-console"), {
  needsKey: () => health?.auth === "on" && !getKey(),
});

async function checkHealth() {
  try {
    health = await getJSON("health");
  } catch (err) {
    authState.textContent = "server unreachable";
    authState.className = "badge bad";
    authState.title = err.message;
    return;
  }
  const note = health.providers?.local?.note;
  if (note) {
    const demo = $("#welcome-demo");
    demo.textContent = `Model local is ${note}.`;
    demo.hidden = false;
  }
  const on = health.auth === "on";
  authState.textContent = on ? "auth on" : "auth off";
  authState.title = on ? "The server checks API keys." : `Auth is ${health.auth}`;
  authState.className = `badge ${on ? "" : "warn"}`.trim();
  keyInput.placeholder = on ? "nrs-… or the master key" : "not needed: auth is off";
}

/** Everything that depends on the key, fetched again. */
async function refresh() {
  if (health?.auth === "on" && !getKey()) {
    chat.needKey(); // ask for it, rather than collect a 401 from every endpoint
    if (consoleView.visible) consoleView.refresh();
    return;
  }
  await chat.loadTargets(health?.models?.chat, health?.models?.embedding);
  await chat.refreshSessions();
  if (!chat.active) await chat.resume();
  if (consoleView.visible) consoleView.refresh();
}

// the welcome is the empty page: it goes once the conversation has anything in it
const log = $("#log");
const showWelcome = () => { $("#welcome").hidden = log.children.length > 0; };
new MutationObserver(showWelcome).observe(log, { childList: true });
showWelcome();

keyInput.value = getKey();
// the key is used from the first keystroke; what depends on it is fetched once typing stops
const refreshSoon = debounce(refresh, 300);
keyInput.addEventListener("input", () => {
  if (keyInput.value.trim() === getKey()) return;
  setKey(keyInput.value);
  refreshSoon();
});
$("#key-box").addEventListener("submit", (e) => {
  e.preventDefault(); // Enter in the key field: use it now
  setKey(keyInput.value);
  refresh();
});
keyRemember.checked = isKeyRemembered();
keyRemember.addEventListener("change", () => rememberKey(keyRemember.checked));
keyShow.addEventListener("click", () => {
  const show = keyInput.type === "password";
  keyInput.type = show ? "text" : "password";
  keyShow.setAttribute("aria-pressed", String(show));
  keyShow.textContent = show ? "Hide" : "Show";
  keyShow.setAttribute("aria-label", show ? "Hide the key" : "Show the key");
});

// --- tabs, with the keys a tablist takes ---

function select(tab, focus = false) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  const name = tab.id === "tab-console" ? "console" : "chat";
  if (name === "console") consoleView.show();
  else consoleView.hide();
  if (location.hash.slice(1) !== name) history.replaceState(null, "", `#${name}`);
}

for (const tab of tabs) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (e) => {
    const i = tabs.indexOf(tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    select(tabs[(to + tabs.length) % tabs.length], true);
  });
}
window.addEventListener("hashchange", () => {
  select(location.hash === "#console" ? tabs[1] : tabs[0]);
});

// --- leaving: close every stream; a background run goes on and is rejoined on return ---

window.addEventListener("pagehide", () => {
  chat.unload();
  consoleView.hide();
});
window.addEventListener("pageshow", (e) => {
  if (!e.persisted) return; // back from the back/forward cache
  chat.restore();
  if (tabs[1].getAttribute("aria-selected") === "true") consoleView.show();
  refresh();
});

async function start() {
  if (location.hash === "#console") select(tabs[1]);
  await checkHealth();
  await refresh();
}

start();
