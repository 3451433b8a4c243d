// The chat: a model through /v1/chat/completions, or an agent run in the background through
// /api/v1/runs, followed on /api/v1/runs/{id}/stream, and rejoined after a reload.

import { ApiError, call, events, getJSON, isAbort, store } from "./api.js";
import { $, ago, clear, clip, el, sleep } from "./dom.js";

const MAX_MESSAGES = 500; // rendered messages kept in the log; older ones are dropped
const MAX_CONVERSATION = 500; // messages sent to a model
const MAX_TOOL_CHARS = 20_000; // shown of a tool's arguments or result
const MAX_SESSIONS = 200;
const RUN_STORE = "noroshi.run"; // the run being followed: id, session, last event id, snapshot
const TARGET_STORE = "noroshi.target";
const SESSION_STORE = "noroshi.session"; // the session on screen, shown again after a reload
const MAX_SNAPSHOT_CHARS = 256 * 1024;
const SAVE_EVERY_MS = 250;
const MAX_RETRIES = 5;
const CANCEL_GRACE_MS = 5000;

/** Text of an OpenAI message content: a string, or the text of its parts. */
function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (part && typeof part.text === "string" ? part.text : part?.refusal || ""))
      .join("");
  }
  return "";
}

function prettyJSON(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return String(text ?? "");
  }
}

/**
 * One assistant turn in the log: the message (text, tool steps, sources, and an error that
 * ended it), then a line about the turn beside it (cancelled, stopped, tokens used). That line
 * is outside the message so that the message's text is the answer and nothing else: once
 * stopped, it stays as it was.
 */
class Turn {
  constructor(who) {
    this.text = "";
    this.textNode = null;
    this.steps = new Map();
    this.sources = null;
    this.seenSources = new Set();
    this.parts = el("div", { class: "parts" });
    this.footer = el("div", { class: "turn-footer" });
    this.message = el("article", {
      class: "msg assistant",
      "data-testid": "message-assistant",
      "data-who": who || "Assistant",
    }, this.parts, this.footer);
    this.meta = el("div", { class: "turn-meta" });
    this.node = el("div", { class: "turn" }, this.message, this.meta);
  }

  set who(value) {
    this.message.setAttribute("data-who", value);
  }

  busy(on) {
    this.message.classList.toggle("streaming", on);
  }

  appendText(text) {
    if (!text) return;
    if (!this.textNode) {
      this.textNode = document.createTextNode("");
      this.parts.append(el("div", { class: "text" }, this.textNode));
    }
    this.textNode.appendData(text);
    this.text += text;
  }

  step(id, name) {
    let step = this.steps.get(id);
    if (step) return step;
    const state = el("span", { class: "tool-state", text: "running" });
    const args = el("pre", { class: "tool-args" });
    const result = el("pre", { class: "tool-result", text: "…" });
    const node = el("details", { class: "tool-step", "data-testid": "tool-step" },
      el("summary", {},
        el("span", { class: "tool-label", text: "Tool" }), " ",
        el("span", { class: "tool-name", text: name || "tool" }), " ",
        state),
      el("div", { class: "tool-body" },
        el("p", { class: "tool-heading", text: "Arguments" }), args,
        el("p", { class: "tool-heading", text: "Result" }), result));
    step = { node, state, args, result };
    this.steps.set(id, step);
    this.textNode = null; // text after a tool call starts a new paragraph
    this.parts.append(node);
    return step;
  }

  toolCall({ id, name, arguments: args }) {
    const step = this.step(id, name);
    step.args.textContent = clip(prettyJSON(args), MAX_TOOL_CHARS);
  }

  toolResult({ id, name, content, is_error: isError }) {
    const step = this.step(id, name);
    step.result.textContent = clip(content, MAX_TOOL_CHARS);
    step.state.textContent = isError ? "error" : "done";
    step.node.classList.toggle("error", Boolean(isError));
    if (isError) step.result.setAttribute("aria-label", "Error result");
  }

  /** A call that waits for a person: Approve / Deny in its step; `answer(id, approved)`. */
  askApproval({ id, name }, answer) {
    const step = this.step(id, name);
    if (step.approval) return;
    step.state.textContent = "waiting for approval";
    step.node.open = true;
    const decide = (approved) => {
      for (const b of step.approval.querySelectorAll("button")) b.disabled = true;
      answer(id, approved);
    };
    step.approval = el("div", { class: "approval", "data-testid": "approval" },
      el("button", { type: "button", text: "Approve", "data-testid": "approve",
        onclick: () => decide(true) }),
      el("button", { type: "button", class: "danger", text: "Deny", "data-testid": "deny",
        onclick: () => decide(false) }));
    step.node.append(step.approval);
  }

  /** The answer, as the run took it up (here or anywhere else). */
  approved({ id, approved, reason }) {
    const step = this.steps.get(id);
    if (!step) return;
    step.approval?.remove();
    step.approval = null;
    step.state.textContent = approved ? "approved" : `denied${reason ? ` (${reason})` : ""}`;
  }

  source(src) {
    if (this.seenSources.has(src.id)) return;
    this.seenSources.add(src.id);
    if (!this.sources) {
      this.sources = el("ol", { class: "sources-list" });
      this.parts.after(el("section", { class: "sources", "aria-label": "Sources" },
        el("p", { class: "sources-heading", text: "Sources" }), this.sources));
    }
    const title = src.title || src.source || "Untitled";
    this.sources.append(el("li", { class: "source", "data-testid": "source" },
      el("span", { class: "source-title", text: title }),
      src.heading ? [" — ", el("span", { class: "source-heading", text: src.heading })] : null,
      src.source ? [" ", el("span", { class: "source-path", text: src.source })] : null));
  }

  /** An error goes in the message; any other note ("info", "cancelled", "usage") beside it. */
  note(text, kind = "info") {
    const error = kind === "error";
    (error ? this.footer : this.meta).append(el("p", {
      class: `status ${kind}`,
      "data-testid": error ? "message-error" : "message-status",
      role: error ? "alert" : null,
      text,
    }));
  }

  usage(u) {
    this.note(`${u.total_tokens} tokens (${u.prompt_tokens} in, ${u.completion_tokens} out)`,
      "usage");
  }
}

export class Chat {
  constructor(root, { onAuthError }) {
    this.root = root;
    this.onAuthError = onAuthError;
    this.log = $("#log", root);
    this.prompt = $("#prompt", root);
    this.send = $("[data-testid=send]", root);
    this.stop = $("[data-testid=stop]", root);
    this.target = $("[data-testid=target]", root);
    this.notice = $("#chat-notice", root);
    this.sessionList = $("#session-list", root);
    this.sessionsNote = $("#sessions-note", root);
    this.sidebar = $("#sidebar", root);
    this.toggle = $("[data-testid=sessions-toggle]", root);
    this.conversation = []; // {role, content} for a model target
    this.currentSession = null;
    this.active = null;
    this.agents = new Map();
    this.unloading = false;
    this.runState = null; // what is kept in localStorage about the run being followed
    this.saveTimer = 0;
    this.scrollQueued = false;
    this.stick = true; // follow the answer down unless the reader scrolled up

    $("#composer", root).addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey) {
        e.preventDefault();
        this.submit();
      }
    });
    this.stop.addEventListener("click", () => this.requestStop());
    $("[data-testid=new-chat]", root).addEventListener("click", () => this.newChat());
    this.target.addEventListener("change", () => store.set(TARGET_STORE, this.target.value));
    this.toggle.addEventListener("click", () => this.showSidebar(!this.sidebarOpen()));
    this.sidebar.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.sidebarOpen()) {
        this.showSidebar(false);
        this.toggle.focus();
      }
    });
    this.log.addEventListener("scroll", () => {
      this.stick = this.nearBottom();
    }, { passive: true });
    // on a phone the list lies over the chat: a tap on the chat puts it away
    $(".chat-main", root).addEventListener("pointerdown", (e) => {
      if (this.sidebarOpen() && !this.toggle.contains(e.target)) this.showSidebar(false);
    });
    $("#sessions-close", root).addEventListener("click", () => {
      this.showSidebar(false);
      this.toggle.focus();
    });
    $("#sessions-refresh", root).addEventListener("click", () => this.refreshSessions());
  }

  get sessionId() {
    return this.currentSession;
  }

  set sessionId(id) {
    this.currentSession = id;
    if (id) store.set(SESSION_STORE, id);
    else store.remove(SESSION_STORE);
  }

  // --- the side list of sessions ---

  sidebarOpen() {
    return this.toggle.getAttribute("aria-expanded") === "true";
  }

  showSidebar(open) {
    this.toggle.setAttribute("aria-expanded", String(open));
    this.sidebar.classList.toggle("open", open);
    if (open) $("button", this.sidebar)?.focus();
  }

  async refreshSessions() {
    let list;
    try {
      list = await getJSON("api/v1/sessions");
    } catch (err) {
      clear(this.sessionList);
      this.sessionsNote.textContent = err.auth
        ? "Enter an API key to see your sessions." : `Could not list sessions: ${err.message}`;
      this.sessionsNote.hidden = false;
      return;
    }
    clear(this.sessionList);
    const sessions = (list.data || []).slice(0, MAX_SESSIONS);
    this.sessionsNote.hidden = sessions.length > 0;
    this.sessionsNote.textContent = "No sessions yet: an agent chat starts one.";
    for (const s of sessions) {
      const title = s.title || "Untitled session";
      const button = el("button", {
        type: "button",
        class: "session",
        "data-testid": "session",
        "data-session-id": s.id,
        "aria-current": s.id === this.sessionId ? "true" : null,
        onclick: () => this.openSession(s.id),
      },
      el("span", { class: "session-title", text: title }), " ",
      el("span", { class: "session-meta", text: `${s.agent} · ${ago(s.updated_at)}` }));
      button.title = title;
      this.sessionList.append(el("li", {}, button));
    }
  }

  markSession() {
    for (const b of this.sessionList.querySelectorAll("[data-testid=session]")) {
      if (b.dataset.sessionId === this.sessionId) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
  }

  // --- what to talk to ---

  /** Models and agents to talk to; the embedding model answers no chat, so it is left out. */
  async loadTargets(defaultModel, embeddingModel) {
    const [models, agents] = await Promise.allSettled([
      getJSON("v1/models"),
      getJSON("api/v1/agents"),
    ]);
    const previous = this.target.value || store.get(TARGET_STORE);
    clear(this.target);
    this.agents.clear();
    if (models.status === "fulfilled") {
      const group = el("optgroup", { label: "Models" });
      for (const m of models.value.data || []) {
        if (m.id === embeddingModel) continue;
        group.append(el("option", { value: `model:${m.id}`, text: `model:${m.id}` }));
      }
      if (group.children.length) this.target.append(group);
      this.clearNotice();
    } else {
      this.showError(models.reason, "list the models");
    }
    if (agents.status === "fulfilled") {
      const group = el("optgroup", { label: "Agents" });
      for (const a of agents.value.data || []) {
        this.agents.set(a.name, a);
        const option = el("option", { value: `agent:${a.name}`, text: `agent:${a.name}` });
        const extra = [a.model && `model ${a.model}`,
          a.tools?.length && `tools: ${a.tools.join(", ")}`].filter(Boolean).join("; ");
        if (extra) option.title = extra;
        group.append(option);
      }
      if (group.children.length) this.target.append(group);
    } // a 404 (an older server) or any other failure: models only
    const values = [...this.target.options].map((o) => o.value);
    const wanted = [previous, defaultModel && `model:${defaultModel}`].find(
      (v) => v && values.includes(v));
    if (wanted) this.target.value = wanted;
    this.target.disabled = values.length === 0;
  }

  /** The server checks keys and none is set: say so, and show nothing that needs one. */
  needKey() {
    clear(this.target);
    this.target.disabled = true;
    this.agents.clear();
    clear(this.sessionList);
    this.sessionsNote.textContent = "Enter an API key to see your sessions.";
    this.sessionsNote.hidden = false;
    this.notice.textContent = "This server needs an API key: enter it in the key field at the top.";
    this.notice.hidden = false;
  }

  selectAgent(name) {
    const value = `agent:${name}`;
    if ([...this.target.options].some((o) => o.value === value)) {
      this.target.value = value;
      store.set(TARGET_STORE, value);
    }
  }

  // --- notices ---

  clearNotice() {
    this.notice.hidden = true;
    this.notice.textContent = "";
  }

  showError(err, doing) {
    if (err instanceof ApiError && err.auth) {
      this.notice.textContent = err.status === 401
        ? "This server needs an API key: enter it in the key field at the top."
        : `This key may not ${doing}: ${err.message}`;
      this.onAuthError?.(err);
    } else {
      this.notice.textContent = `Could not ${doing}: ${err.message}`;
    }
    this.notice.hidden = false;
  }

  // --- the log ---

  nearBottom() {
    const log = this.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < 96;
  }

  scrollDown(force = false) {
    if (!force && !this.stick) return;
    if (this.scrollQueued) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      this.log.scrollTop = this.log.scrollHeight;
    });
  }

  append(node) {
    this.log.append(node);
    while (this.log.childElementCount > MAX_MESSAGES) this.log.firstElementChild.remove();
    this.scrollDown(true);
  }

  addUser(text) {
    this.append(el("article", { class: "msg user", "data-testid": "message-user", "data-who": "You" },
      el("div", { class: "text", text })));
  }

  addTurn(who) {
    const turn = new Turn(who);
    this.append(turn.node);
    return turn;
  }

  remember(role, content) {
    this.conversation.push({ role, content });
    if (this.conversation.length > MAX_CONVERSATION) {
      this.conversation.splice(0, this.conversation.length - MAX_CONVERSATION);
    }
  }

  // --- sending ---

  begin(active) {
    this.active = active;
    this.send.disabled = true;
    this.stop.disabled = false;
    this.log.setAttribute("aria-busy", "true");
    active.turn.busy(true);
  }

  end(active) {
    if (this.active !== active) return;
    this.active = null;
    active.turn.busy(false);
    this.send.disabled = false;
    const hadFocus = document.activeElement === this.stop;
    this.stop.disabled = true;
    this.log.setAttribute("aria-busy", "false");
    if (hadFocus) this.prompt.focus();
  }

  submit() {
    const text = this.prompt.value;
    if (!text.trim() || this.active) return;
    const [kind, ...rest] = this.target.value.split(":");
    const name = rest.join(":");
    if (!name) {
      this.notice.textContent = "Nothing to talk to: no models or agents are available to this key.";
      this.notice.hidden = false;
      return;
    }
    this.prompt.value = "";
    if (kind === "agent") this.sendAgent(name, text);
    else this.sendModel(name, text);
  }

  async sendModel(model, prompt) {
    this.remember("user", prompt);
    this.addUser(prompt);
    const turn = this.addTurn(model);
    const active = { kind: "model", controller: new AbortController(), turn };
    this.begin(active);
    let done = false;
    let failed = false;
    try {
      const res = await call("v1/chat/completions", {
        method: "POST",
        body: { model, stream: true, messages: this.conversation },
        signal: active.controller.signal,
      });
      for await (const ev of events(res)) {
        if (ev.data === "[DONE]") {
          done = true;
          break;
        }
        let chunk;
        try {
          chunk = JSON.parse(ev.data);
        } catch {
          continue;
        }
        if (ev.event === "error" || chunk.error) {
          turn.note(chunk.error?.message || chunk.message || "The stream failed.", "error");
          failed = true;
          break;
        }
        const delta = chunk.choices?.[0]?.delta;
        if (delta) {
          turn.appendText(delta.content || delta.refusal || "");
          this.scrollDown();
        }
      }
      if (!done && !failed) turn.note("The stream ended before the answer was complete.", "error");
    } catch (err) {
      if (isAbort(err)) {
        if (!this.unloading) turn.note("Stopped.", "cancelled");
      } else {
        turn.note(err.message, "error");
        if (err.auth) this.showError(err, `use model ${model}`);
      }
    } finally {
      if (this.active === active && turn.text) this.remember("assistant", turn.text);
      this.end(active);
    }
  }

  async sendAgent(agent, prompt) {
    this.addUser(prompt);
    const turn = this.addTurn(agent);
    const active = {
      kind: "agent", controller: new AbortController(), turn, runId: null, cancelling: false,
    };
    this.begin(active);
    try {
      const body = { prompt, agent, background: true };
      if (this.sessionId) body.session_id = this.sessionId;
      const accepted = await getJSON("api/v1/runs", {
        method: "POST", body, signal: active.controller.signal,
      });
      active.runId = accepted.run_id;
      this.sessionId = accepted.session_id;
      this.remember("user", prompt);
      this.runState = {
        runId: accepted.run_id, sessionId: accepted.session_id, agent, prompt,
        lastEventId: 0, events: [], size: 0,
      };
      this.saveRun(true);
      this.refreshSessions();
      if (active.cancelling) this.cancelRun(active);
      await this.follow(active, 0);
    } catch (err) {
      this.agentFailed(active, err);
    } finally {
      if (this.active === active && turn.text && !this.unloading) {
        this.remember("assistant", turn.text);
      }
      this.end(active);
    }
  }

  agentFailed(active, err) {
    if (isAbort(err)) {
      if (this.unloading || active.detached) return; // the run goes on; a reload rejoins it
      active.turn.note("Run cancelled.", "cancelled");
      this.forgetRun();
      return;
    }
    active.turn.note(err.message, "error");
    if (err instanceof ApiError && err.auth) this.showError(err, "run agents");
    if (err instanceof ApiError && err.status >= 400 && err.status !== 429) this.forgetRun();
  }

  /** Follow a run's events after `after`, rejoining with Last-Event-ID when the connection
   * drops; returns at its terminal event. */
  async follow(active, after) {
    const { signal } = active.controller;
    let last = after;
    let tries = 0;
    let waited = false;
    for (;;) {
      try {
        const headers = last > 0 ? { "last-event-id": String(last) } : undefined;
        const res = await call(`api/v1/runs/${encodeURIComponent(active.runId)}/stream`,
          { signal, headers });
        for await (const ev of events(res)) {
          const seq = ev.id === null ? NaN : Number(ev.id);
          if (Number.isFinite(seq)) {
            if (seq <= last) continue; // already shown
            last = seq;
          }
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            continue;
          }
          const type = data.type || ev.event;
          tries = 0;
          // after stop, the answer stands still: only the event that ends the run is shown
          if (active.cancelling && type !== "run.finished" && type !== "error") continue;
          this.record(type, data, last);
          if (this.apply(active.turn, type, data)) {
            this.forgetRun();
            this.refreshSessions();
            return;
          }
          if (type === "run.waiting") { // the stream ends here: join again once answered
            await this.answered(active);
            waited = true;
          }
        }
      } catch (err) {
        if (isAbort(err)) throw err;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          throw err;
        }
      }
      if (waited) {
        waited = false;
        tries = 0;
        continue;
      }
      // the stream ended without its terminator: the connection dropped; join again
      tries += 1;
      if (tries > MAX_RETRIES) {
        active.detached = true;
        active.turn.note("Lost the run's stream; reload the page to rejoin it.", "error");
        return;
      }
      await sleep(Math.min(400 * 2 ** tries, 8000), signal);
    }
  }

  /** Until every call the run waits on is answered from this page (or the page stops). */
  answered(active) {
    active.turn.note("Waiting for your approval.");
    return new Promise((resolve) => {
      active.resume = resolve;
      active.controller.signal.addEventListener("abort", resolve, { once: true });
    });
  }

  /** Send a person's answer to a call the run waits on. */
  async answer(active, id, approved) {
    try {
      const answer = await getJSON(`api/v1/runs/${encodeURIComponent(active.runId)}/approvals`,
        { method: "POST", body: { tool_call_id: id, approved } });
      if (answer.status === "running") active.resume?.();
    } catch (err) {
      active.turn.note(`Could not answer: ${err.message}`, "error");
      active.resume?.();
    }
  }

  /** Render one native agent event; true when it ends the run. */
  apply(turn, type, data) {
    switch (type) {
      case "run.started":
        turn.who = data.model ? `${data.agent} · ${data.model}` : data.agent;
        return false;
      case "text.delta":
        turn.appendText(data.text);
        this.scrollDown();
        return false;
      case "tool.call":
        turn.toolCall(data);
        this.scrollDown();
        return false;
      case "tool.approval_requested":
        turn.askApproval(data, (id, approved) => this.answer(this.active, id, approved));
        this.scrollDown();
        return false;
      case "tool.approval":
        turn.approved(data);
        return false;
      case "tool.result":
        turn.toolResult(data);
        return false;
      case "source":
        turn.source(data);
        this.scrollDown();
        return false;
      case "usage":
        turn.usage(data);
        return false;
      case "run.finished":
        if (data.finish_reason === "max_steps") turn.note("Stopped at the agent's step limit.");
        this.scrollDown();
        return true;
      case "error":
        if (data.code === "cancelled") turn.note("Run cancelled.", "cancelled");
        else turn.note(data.message || "The run failed.", "error");
        this.scrollDown();
        return true;
      default: // step.started, step.finished and anything newer
        return false;
    }
  }

  // --- stopping ---

  requestStop() {
    const active = this.active;
    if (!active) return;
    if (active.kind === "model") {
      active.controller.abort();
      return;
    }
    if (active.cancelling) return;
    active.cancelling = true;
    this.stop.disabled = true;
    if (active.runId) this.cancelRun(active);
  }

  async cancelRun(active) {
    try {
      await call(`api/v1/runs/${encodeURIComponent(active.runId)}/cancel`, { method: "POST" });
    } catch (err) {
      active.turn.note(`Could not cancel the run: ${err.message}`, "error");
      active.detached = true;
      active.controller.abort();
      return;
    }
    // the stream should end with its cancelled event; if it does not come, stop waiting
    setTimeout(() => {
      if (this.active === active) active.controller.abort();
    }, CANCEL_GRACE_MS);
  }

  /** Stop following whatever is streaming, without cancelling a run. */
  detach() {
    const active = this.active;
    if (!active) return;
    active.detached = true;
    active.controller.abort();
    this.end(active);
    this.forgetRun();
  }

  // --- the run kept across reloads ---

  record(type, data, last) {
    const state = this.runState;
    if (!state) return;
    state.lastEventId = last;
    if (!state.truncated) {
      const prev = state.events[state.events.length - 1];
      if (type === "text.delta" && prev?.type === "text.delta") prev.text += data.text;
      else state.events.push(type === "text.delta" ? { type, text: data.text } : data);
      state.size += (type === "text.delta" ? data.text.length : JSON.stringify(data).length);
      if (state.size > MAX_SNAPSHOT_CHARS) {
        // too much to keep: after a reload, replay the whole run from the server instead
        state.truncated = true;
        state.events = [];
      }
    }
    this.saveRun(type === "run.finished" || type === "error");
  }

  saveRun(now = false) {
    const write = () => {
      this.saveTimer = 0;
      const s = this.runState;
      if (!s) return;
      store.setJSON(RUN_STORE, {
        runId: s.runId, sessionId: s.sessionId, agent: s.agent, prompt: s.prompt,
        lastEventId: s.truncated ? 0 : s.lastEventId, events: s.truncated ? [] : s.events,
      });
    };
    if (now) {
      clearTimeout(this.saveTimer);
      write();
    } else if (!this.saveTimer) {
      this.saveTimer = setTimeout(write, SAVE_EVERY_MS);
    }
  }

  forgetRun() {
    clearTimeout(this.saveTimer);
    this.saveTimer = 0;
    this.runState = null;
    store.remove(RUN_STORE);
  }

  /** After a reload: if the run we followed still runs, show its session and rejoin it. */
  async resume() {
    if (this.resuming) return;
    this.resuming = true;
    try {
      await this.rejoin();
    } finally {
      this.resuming = false;
    }
  }

  async rejoin() {
    const saved = store.getJSON(RUN_STORE);
    if (!saved || typeof saved.runId !== "string") {
      // no run to rejoin: show the session that was on screen, if the screen is still empty
      const last = store.get(SESSION_STORE);
      if (last && !this.active && !this.currentSession && !this.log.childElementCount) {
        if (!(await this.openSession(last, { quiet: true }))) this.sessionId = null;
      }
      return;
    }
    if (this.active) return;
    let run;
    try {
      run = await getJSON(`api/v1/runs/${encodeURIComponent(saved.runId)}`);
    } catch (err) {
      if (!(err instanceof ApiError && (err.auth || err.status === 0))) this.forgetRun();
      return; // without the key (yet), keep it: entering the key tries again
    }
    if (this.active) return;
    const opened = await this.openSession(saved.sessionId || run.session_id, { quiet: true });
    if (run.status !== "running") {
      this.forgetRun(); // it ended while we were away: the session shows how
      return;
    }
    if (this.active) return; // the reader started something meanwhile
    if (!opened) this.clearLog();
    this.sessionId = saved.sessionId || run.session_id;
    this.selectAgent(saved.agent || run.agent);
    if (saved.prompt) {
      this.addUser(saved.prompt);
      this.remember("user", saved.prompt);
    }
    const turn = this.addTurn(saved.agent || run.agent);
    const events = Array.isArray(saved.events) ? saved.events : [];
    for (const ev of events) this.apply(turn, ev.type, ev);
    this.runState = {
      runId: saved.runId, sessionId: this.sessionId, agent: saved.agent, prompt: saved.prompt,
      lastEventId: Number(saved.lastEventId) || 0, events, size: JSON.stringify(events).length,
    };
    await this.followRun(turn, saved.runId, this.runState.lastEventId);
  }

  /** Follow a run that is already going, into `turn`, from after event `after`. */
  async followRun(turn, runId, after) {
    const active = {
      kind: "agent", controller: new AbortController(), turn, runId, cancelling: false,
    };
    this.begin(active);
    try {
      await this.follow(active, after);
    } catch (err) {
      this.agentFailed(active, err);
    } finally {
      if (this.active === active && turn.text && !this.unloading) {
        this.remember("assistant", turn.text);
      }
      this.end(active);
    }
  }

  // --- sessions in the log ---

  clearLog() {
    clear(this.log);
    this.conversation = [];
  }

  newChat() {
    this.detach();
    this.clearLog();
    this.sessionId = null;
    this.markSession();
    this.clearNotice();
    this.prompt.focus();
  }

  /** Show a session's messages and continue it; false when it could not be loaded. */
  async openSession(id, { quiet = false } = {}) {
    if (!quiet && this.active && id === this.sessionId) {
      if (this.sidebarOpen()) this.showSidebar(false); // already here, and live
      return true;
    }
    let detail;
    try {
      detail = await getJSON(`api/v1/sessions/${encodeURIComponent(id)}`);
    } catch (err) {
      if (!quiet) this.showError(err, "open the session");
      return false;
    }
    if (!quiet) this.detach();
    this.clearLog();
    this.sessionId = detail.id;
    this.markSession();
    this.render(detail.messages || [], detail.runs || [], detail.agent);
    this.selectAgent(detail.agent);
    if (!quiet) {
      this.clearNotice();
      if (this.sidebarOpen()) this.showSidebar(false);
      this.scrollDown(true);
      this.prompt.focus();
      // a run of this session still going (started elsewhere, or left a moment ago): join it
      const running = (detail.runs || []).find((r) => r.status === "running");
      if (running && !this.active) {
        this.runState = {
          runId: running.id, sessionId: detail.id, agent: running.agent, prompt: "",
          lastEventId: 0, events: [], size: 0,
        };
        this.saveRun(true);
        this.followRun(this.addTurn(running.agent), running.id, 0);
      }
    }
    return true;
  }

  /** OpenAI-shaped messages: each user message, then one turn for what the agent did, named
   * and with its token line as it was while it streamed (the session's runs, in order). */
  render(messages, runs = [], agent = "") {
    let turn = null;
    let run = null;
    const done = runs.filter((r) => r.status !== "running")
      .sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
    const names = new Map(); // tool call id -> tool name
    const open = () => {
      if (turn) return turn;
      run = done.shift() || null;
      const name = run?.agent || agent || "Assistant";
      const model = this.agents.get(name)?.model;
      turn = this.addTurn(model ? `${name} · ${model}` : name);
      return turn;
    };
    const flush = () => {
      if (turn?.text) this.remember("assistant", turn.text);
      if (turn && run && run.prompt_tokens + run.completion_tokens > 0) {
        turn.usage({
          prompt_tokens: run.prompt_tokens, completion_tokens: run.completion_tokens,
          total_tokens: run.prompt_tokens + run.completion_tokens,
        });
      }
      turn = null;
      run = null;
    };
    for (const m of messages.slice(-MAX_MESSAGES * 4)) {
      if (m.role === "user") {
        flush();
        const text = textOf(m.content);
        this.addUser(text);
        this.remember("user", text);
      } else if (m.role === "assistant") {
        open().appendText(textOf(m.content) || m.refusal || "");
        for (const tc of m.tool_calls || []) {
          names.set(tc.id, tc.function?.name);
          turn.toolCall({ id: tc.id, name: tc.function?.name, arguments: tc.function?.arguments });
        }
      } else if (m.role === "tool") {
        open().toolResult({
          id: m.tool_call_id, name: names.get(m.tool_call_id), content: textOf(m.content),
          is_error: false,
        });
      }
    }
    flush();
  }

  // --- the page goes away ---

  unload() {
    this.unloading = true;
    if (this.runState) this.saveRun(true);
    this.active?.controller.abort();
  }

  restore() {
    this.unloading = false;
  }
}
