// The console: virtual keys, usage charts (inline SVG, no library) and live counters read
// from the Prometheus text at /metrics.

import { ApiError, call, getJSON, parseMetrics } from "./api.js";
import { $, clear, el, svg } from "./dom.js";

const POLL_MS = 2000;
const MAX_BARS = 31;

function fmt(n) {
  return Number(n || 0).toLocaleString();
}

function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso ?? "") : d.toLocaleString();
}

/** A horizontal bar chart: one row per item, each bar stacked from `parts`. */
function barChart({ id, title, rows, series, width }) {
  const rowH = 26;
  const labelW = Math.round(Math.min(180, Math.max(80, width * 0.3)));
  const valueW = 72;
  const barW = Math.max(40, width - labelW - valueW - 12);
  const height = rows.length * rowH + 4;
  const max = Math.max(1, ...rows.map((r) => r.values.reduce((a, b) => a + b, 0)));
  const maxChars = Math.max(6, Math.floor(labelW / 7.5));
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const summary = rows.map((r) => `${r.label}: ${fmt(r.values.reduce((a, b) => a + b, 0))}`)
    .join("; ");
  const chart = svg("svg", {
    class: "bars", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-labelledby": `${titleId} ${descId}`,
  },
  svg("title", { id: titleId }, title),
  svg("desc", { id: descId }, summary));
  rows.forEach((row, i) => {
    const y = i * rowH + 2;
    const total = row.values.reduce((a, b) => a + b, 0);
    const label = row.label.length > maxChars ? `${row.label.slice(0, maxChars - 1)}…` : row.label;
    chart.append(svg("text", { x: labelW - 8, y: y + rowH / 2, class: "bar-label",
      "text-anchor": "end", "dominant-baseline": "middle" }, label,
    svg("title", {}, row.label)));
    let x = labelW;
    row.values.forEach((value, k) => {
      const w = (value / max) * barW;
      if (w <= 0) return;
      chart.append(svg("rect", { x, y: y + 4, width: Math.max(1, w), height: rowH - 8,
        class: `bar ${series[k].cls}`, rx: 2 },
      svg("title", {}, `${row.label}: ${fmt(value)} ${series[k].name}`)));
      x += w;
    });
    chart.append(svg("text", { x: x + 6, y: y + rowH / 2, class: "bar-value",
      "dominant-baseline": "middle" }, fmt(total)));
  });
  const legend = el("ul", { class: "legend" }, series.map((s) =>
    el("li", {}, el("span", { class: `swatch ${s.cls}`, "aria-hidden": "true" }), s.name)));
  const table = el("table", { class: "data-table" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Group" }),
      series.map((s) => el("th", { scope: "col", text: s.name })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r.label }),
      r.values.map((v) => el("td", { text: fmt(v) }))))));
  return el("figure", { class: "chart" },
    el("figcaption", { text: title }),
    chart,
    legend,
    el("details", { class: "chart-table" }, el("summary", { text: `${title} as a table` }), table));
}

export class Console {
  constructor(root, { needsKey } = {}) {
    this.root = root;
    this.needsKey = needsKey || (() => false);
    this.error = $("[data-testid=console-error]", root);
    this.form = $("#key-form", root);
    this.name = $("[data-testid=key-name]", root);
    this.rpm = $("[data-testid=key-rpm]", root);
    this.createButton = $("[data-testid=key-create]", root);
    this.formStatus = $("#key-form-status", root);
    this.created = $("#key-created", root);
    this.secret = $("[data-testid=key-secret]", root);
    this.createdName = $("#key-created-name", root);
    this.copyStatus = $("#key-copy-status", root);
    this.rows = $("#key-rows", root);
    this.keysEmpty = $("#keys-empty", root);
    this.group = $("[data-testid=usage-group-by]", root);
    this.chart = $("[data-testid=usage-chart]", root);
    this.counters = {
      active: $("[data-testid=counter-active-streams]", root),
      rps: $("[data-testid=counter-rps]", root),
      errors: $("[data-testid=counter-errors]", root),
      errorsDetail: $("#counter-errors-detail", root),
      note: $("#counters-note", root),
    };
    this.keyNames = new Map(); // key id -> name, for the usage chart by key
    this.visible = false;
    this.pollTimer = 0;
    this.pollGeneration = 0;
    this.previous = null; // the last sample of the requests counter
    this.usage = null;
    this.chartWidth = 0;

    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.createKey();
    });
    $("[data-testid=key-copy]", root).addEventListener("click", () => this.copySecret());
    $("#key-dismiss", root).addEventListener("click", () => {
      this.created.hidden = true;
      this.secret.textContent = "";
      this.name.focus();
    });
    $("#keys-refresh", root).addEventListener("click", () => this.refreshKeys());
    this.group.addEventListener("change", () => this.refreshUsage());
    $("#usage-refresh", root).addEventListener("click", () => this.refreshUsage());
    if ("ResizeObserver" in window) {
      new ResizeObserver(() => {
        const width = this.chart.clientWidth;
        if (this.usage && width && Math.abs(width - this.chartWidth) > 8) this.drawUsage();
      }).observe(this.chart);
    }
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.visible) this.startPolling();
      else this.stopPolling();
    });
  }

  show() {
    this.visible = true;
    this.refresh();
    this.startPolling();
  }

  hide() {
    this.visible = false;
    this.stopPolling();
  }

  refresh() {
    this.hideError();
    if (this.needsKey()) {
      // no request to collect a 401 from: the server checks keys and none is set
      clear(this.rows);
      clear(this.chart);
      this.keysEmpty.hidden = true;
      this.usage = null;
      this.showError(new ApiError(401, "No API key is set."), "");
      return;
    }
    this.refreshKeys().then(() => this.refreshUsage());
  }

  // --- errors ---

  hideError() {
    this.error.hidden = true;
    this.error.textContent = "";
  }

  showError(err, doing) {
    let text;
    if (err instanceof ApiError && err.status === 401) {
      text = "The console needs the master key: enter it in the API key field at the top. "
        + `(${err.message})`;
    } else if (err instanceof ApiError && err.status === 403) {
      text = "This key is not the master key, and the console needs the master key: enter it "
        + `in the API key field at the top. (${err.message})`;
    } else {
      text = `Could not ${doing}: ${err.message}`;
    }
    this.error.textContent = text;
    this.error.hidden = false;
  }

  // --- keys ---

  async refreshKeys() {
    let list;
    try {
      list = await getJSON("admin/keys");
    } catch (err) {
      clear(this.rows);
      this.keysEmpty.hidden = true;
      this.showError(err, "list the keys");
      return;
    }
    clear(this.rows);
    this.keyNames.clear();
    const keys = list.data || [];
    this.keysEmpty.hidden = keys.length > 0;
    for (const key of keys) {
      this.keyNames.set(key.id, key.name);
      const limits = [key.rpm ? `${fmt(key.rpm)} rpm` : "", key.tpm ? `${fmt(key.tpm)} tpm` : ""]
        .filter(Boolean).join(" · ") || "none";
      const revoke = el("button", {
        type: "button", class: "danger small", "data-testid": "key-revoke",
        "aria-label": `Revoke key ${key.name}`, text: "Revoke",
        onclick: () => this.revokeKey(key, revoke),
      });
      this.rows.append(el("tr", { "data-testid": "key-row", "data-key-id": key.id },
        el("th", { scope: "row", class: "key-name", text: key.name }),
        el("td", {}, el("code", { text: key.hint })),
        el("td", { text: limits }),
        el("td", { text: when(key.created_at) }),
        el("td", {}, revoke)));
    }
  }

  async createKey() {
    const name = this.name.value.trim();
    const rpmText = this.rpm.value.trim();
    if (!name) {
      this.formStatus.textContent = "Give the key a name.";
      this.name.focus();
      return;
    }
    const body = { name };
    if (rpmText) {
      const rpm = Number(rpmText);
      if (!Number.isInteger(rpm) || rpm < 1) {
        this.formStatus.textContent = "Requests per minute must be a whole number of 1 or more.";
        this.rpm.focus();
        return;
      }
      body.rpm = rpm;
    }
    this.createButton.disabled = true;
    this.formStatus.textContent = "Creating…";
    try {
      const created = await getJSON("admin/keys", { method: "POST", body });
      this.hideError();
      this.formStatus.textContent = "";
      this.createdName.textContent = created.name;
      this.secret.textContent = created.key;
      this.copyStatus.textContent = "";
      this.created.hidden = false;
      this.form.reset();
      this.secret.focus();
      await this.refreshKeys();
    } catch (err) {
      this.formStatus.textContent = "";
      this.showError(err, "create the key");
    } finally {
      this.createButton.disabled = false;
    }
  }

  async copySecret() {
    const text = this.secret.textContent;
    try {
      await navigator.clipboard.writeText(text);
      this.copyStatus.textContent = "Copied.";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(this.secret);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      let copied = false;
      try {
        copied = document.execCommand("copy");
      } catch { /* not allowed */ }
      this.copyStatus.textContent = copied ? "Copied." : "Selected: press Ctrl+C (⌘C) to copy.";
    }
  }

  async revokeKey(key, button) {
    if (!window.confirm(`Revoke the key "${key.name}" (${key.hint})? Anything using it stops `
      + "working at once. This cannot be undone.")) return;
    button.disabled = true;
    try {
      await call(`admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      this.hideError();
    } catch (err) {
      this.showError(err, `revoke ${key.name}`);
    }
    await this.refreshKeys();
  }

  // --- usage ---

  async refreshUsage() {
    const group = this.group.value;
    try {
      const answer = await getJSON(`admin/usage?group_by=${encodeURIComponent(group)}`);
      this.usage = { group, rows: answer.data || [] };
    } catch (err) {
      this.usage = null;
      clear(this.chart);
      this.chart.append(el("p", { class: "muted", text: "No usage to show." }));
      this.showError(err, "read the usage");
      return;
    }
    this.drawUsage();
  }

  label(row, group) {
    if (group === "day") return row.day || "?";
    if (group === "model") return row.model || "?";
    if (!row.key_id) return "(no key)";
    const name = this.keyNames.get(row.key_id);
    return name ? `${name} (${row.key_id})` : row.key_id;
  }

  drawUsage() {
    const { group, rows } = this.usage;
    clear(this.chart);
    this.chartWidth = this.chart.clientWidth || 600;
    if (!rows.length) {
      this.chart.append(el("p", { class: "muted", text: "No usage recorded yet." }));
      return;
    }
    let sorted = [...rows];
    if (group === "day") sorted.sort((a, b) => String(a.day).localeCompare(String(b.day)));
    else sorted.sort((a, b) => b.total_tokens - a.total_tokens);
    sorted = group === "day" ? sorted.slice(-MAX_BARS) : sorted.slice(0, MAX_BARS);
    const width = Math.max(260, Math.min(this.chartWidth, 900));
    const label = (r) => this.label(r, group);
    this.chart.append(
      barChart({
        id: "usage-tokens", title: "Tokens", width,
        series: [{ name: "prompt tokens", cls: "s1" }, { name: "completion tokens", cls: "s2" }],
        rows: sorted.map((r) => ({ label: label(r), values: [r.prompt_tokens, r.completion_tokens] })),
      }),
      barChart({
        id: "usage-requests", title: "Requests", width,
        series: [{ name: "successful requests", cls: "s3" }, { name: "errors", cls: "s4" }],
        rows: sorted.map((r) => ({
          label: label(r), values: [Math.max(0, r.requests - r.errors), r.errors],
        })),
      }),
    );
  }

  // --- live counters ---

  startPolling() {
    if (this.pollTimer || !this.visible || document.visibilityState !== "visible") return;
    const generation = ++this.pollGeneration;
    const tick = async () => {
      await this.poll();
      if (generation === this.pollGeneration) this.pollTimer = setTimeout(tick, POLL_MS);
    };
    this.pollTimer = setTimeout(tick, 0);
  }

  stopPolling() {
    this.pollGeneration += 1; // a poll under way schedules no other
    clearTimeout(this.pollTimer);
    this.pollTimer = 0;
    this.previous = null; // a gap: the next rate starts afresh
  }

  async poll() {
    let text;
    try {
      text = await (await call("metrics")).text();
    } catch (err) {
      this.counters.note.textContent = `Could not read /metrics: ${err.message}`;
      return;
    }
    const at = performance.now();
    let active = 0;
    let requests = 0;
    let serverErrors = 0;
    let upstream = 0;
    for (const s of parseMetrics(text)) {
      if (s.name === "noroshi_active_streams") active += s.value;
      else if (s.name === "noroshi_requests_total") {
        if (s.labels.route !== "/metrics") requests += s.value; // not our own polling
        if (Number(s.labels.status) >= 500) serverErrors += s.value;
      } else if (s.name === "noroshi_upstream_errors_total") upstream += s.value;
    }
    this.counters.note.textContent = "";
    this.counters.active.textContent = String(active);
    if (this.previous) {
      const seconds = (at - this.previous.at) / 1000;
      const rate = seconds > 0 ? Math.max(0, requests - this.previous.requests) / seconds : 0;
      this.counters.rps.textContent = rate.toFixed(rate >= 10 ? 1 : 2);
    }
    this.previous = { at, requests };
    this.counters.errors.textContent = String(serverErrors + upstream);
    this.counters.errorsDetail.textContent =
      `${fmt(serverErrors)} responses ≥ 500, ${fmt(upstream)} failed upstream attempts`;
  }
}
