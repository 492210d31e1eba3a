// The Agents panel: every agent, live from /sse/status, in a windowed
// table (only the rows in view exist in the page, so 1,000 agents cost
// what 30 do), with sparklines of recent CPU and memory samples, and the
// health of the agents that have a probe under their status.

import { bytes, duration, el, LIVE, pushBounded, setText } from "./util.js";

/** Samples kept per agent for the sparklines. */
const SAMPLES = 30;
/** Rows drawn above and below the visible ones. */
const OVERSCAN = 4;
const SVG = "http://www.w3.org/2000/svg";

export class AgentsPanel {
  /**
   * `actions`: { control(id, op) -> Promise, select(id), follow(id),
   * isFollowed(id), edit(id), create() }.
   */
  constructor(actions) {
    this.actions = actions;
    this.viewport = document.getElementById("agents-viewport");
    this.spacer = document.getElementById("agents-spacer");
    this.filterBox = document.getElementById("agents-filter");
    this.count = document.getElementById("agents-count");
    this.note = document.getElementById("agents-note");
    /** id -> { s: summary, base, baseAt, cpu: [], mem: [], busy } */
    this.agents = new Map();
    this.ids = []; // sorted
    this.visible = []; // ids passing the filter
    this.shown = new Map(); // id -> row element in the page
    this.pool = [];
    this.canOperate = false;
    this.canEdit = false;
    this.newButton = document.getElementById("agents-new");
    this.newButton.addEventListener("click", () => this.actions.create());
    this.selected = null;
    this.rowH = 40;
    this.frame = 0;
    this.listDirty = true;
    this.marked = false;

    this.filterBox.addEventListener("input", () => this.changed(true));
    this.viewport.addEventListener("scroll", () => this.schedule());
    this.viewport.addEventListener("click", (e) => this.click(e));
    this.resize = new ResizeObserver(() => this.measure());
    this.resize.observe(this.viewport);
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  destroy() {
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    for (const row of this.shown.values()) row.remove();
    this.shown.clear();
    this.agents.clear();
    this.ids = [];
    this.visible = [];
  }

  /** The key's role, and whether it may edit agents (admin, `api_edits` on). */
  setRole(role, edits) {
    this.canOperate = role === "operate" || role === "admin";
    this.canEdit = Boolean(edits);
    this.newButton.hidden = !this.canEdit;
    this.note.textContent = this.canOperate ? "" : "read-only key: start, stop and restart are off";
    this.changed(false);
  }

  // --- events from /sse/status ---

  snapshot(list) {
    const old = this.agents;
    this.agents = new Map();
    for (const s of list) {
      const prev = old.get(s.id);
      this.agents.set(s.id, this.entry(s, prev));
    }
    this.ids = [...this.agents.keys()].sort();
    this.changed(true);
  }

  entry(s, prev) {
    const a = prev || { cpu: [], mem: [], busy: null };
    a.s = s;
    a.base = s.uptime_s;
    a.baseAt = performance.now();
    if (s.resources) this.sample(a, s.resources);
    return a;
  }

  summary(s) {
    const known = this.agents.has(s.id);
    this.agents.set(s.id, this.entry(s, this.agents.get(s.id)));
    if (!known) this.ids = [...this.agents.keys()].sort();
    this.changed(!known || this.filterBox.value !== "");
  }

  status(ev) {
    const a = this.agents.get(ev.agent_id);
    if (!a) return; // its summary follows
    const wasLive = LIVE.has(a.s.status);
    a.s = { ...a.s, status: ev.new_status, pid: ev.pid };
    if (!LIVE.has(ev.new_status)) {
      a.base = null;
      a.s.resources = null;
      // Nothing runs: no health (the summary that follows says the same).
      a.s.health = null;
      a.s.health_detail = null;
    } else if (!wasLive || a.base == null) {
      a.base = 0;
      a.baseAt = performance.now();
    }
    this.changed(this.filterBox.value !== "");
  }

  /** A `health` event: the probe's new verdict (its summary follows too). */
  health(ev) {
    const a = this.agents.get(ev.agent_id);
    if (!a) return; // its summary follows
    a.s = { ...a.s, health: ev.new_health, health_detail: ev.detail };
    this.changed(this.filterBox.value !== "");
  }

  /** An agent left the config: its row goes (it comes back as new if re-added). */
  removed(ev) {
    if (!this.agents.delete(ev.agent_id)) return;
    this.ids = this.ids.filter((id) => id !== ev.agent_id);
    if (this.selected === ev.agent_id) this.selected = null;
    this.changed(true);
  }

  resources(ev) {
    for (const [id, r] of Object.entries(ev.agents)) {
      const a = this.agents.get(id);
      if (a) {
        a.s.resources = r;
        this.sample(a, r);
      }
    }
    this.changed(false);
  }

  sample(a, r) {
    pushBounded(a.cpu, r.cpu_pct, SAMPLES);
    pushBounded(a.mem, r.rss_bytes, SAMPLES);
  }

  setBusy(id, op) {
    const a = this.agents.get(id);
    if (a) a.busy = op;
    this.changed(false);
  }

  select(id) {
    this.selected = id;
    this.changed(false);
  }

  // --- drawing ---

  /** Something changed: redraw at the next frame (several changes, one draw). */
  changed(list) {
    if (list) this.listDirty = true;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  measure() {
    const h = parseFloat(getComputedStyle(this.viewport).getPropertyValue("--row-h"));
    if (h > 0) this.rowH = h;
    this.changed(false);
  }

  draw() {
    this.frame = 0;
    if (this.listDirty) {
      this.listDirty = false;
      const f = this.filterBox.value.trim().toLowerCase();
      this.visible = f
        ? this.ids.filter((id) => {
            const s = this.agents.get(id).s;
            return id.includes(f) || s.status === f || s.health === f;
          })
        : this.ids;
      this.spacer.style.height = `${this.visible.length * this.rowH}px`;
      this.count.textContent = f
        ? `(${this.visible.length} of ${this.ids.length})`
        : `(${this.ids.length})`;
    }
    const top = this.viewport.scrollTop;
    const first = Math.max(0, Math.floor(top / this.rowH) - OVERSCAN);
    const last = Math.min(this.visible.length, Math.ceil((top + this.viewport.clientHeight) / this.rowH) + OVERSCAN);
    const want = new Set(this.visible.slice(first, last));
    for (const [id, row] of this.shown) {
      if (!want.has(id)) {
        row.remove();
        this.shown.delete(id);
        this.pool.push(row);
      }
    }
    for (let i = first; i < last; i++) {
      const id = this.visible[i];
      let row = this.shown.get(id);
      if (!row) {
        row = this.pool.pop() || this.makeRow();
        this.shown.set(id, row);
        this.viewport.append(row);
      }
      row.style.top = `${i * this.rowH}px`;
      row.setAttribute("aria-rowindex", String(i + 2));
      this.fill(row, id);
    }
    // Rows kept for reuse: no more than a screenful.
    if (this.pool.length > 60) this.pool.length = 60;
    // When the table first showed agents (read by the benchmark).
    if (!this.marked && last > first) {
      this.marked = true;
      performance.mark("agents-table");
    }
  }

  makeRow() {
    const row = el("div", "row");
    row.setAttribute("role", "row");
    const cell = (cls) => {
      const c = el("span", cls);
      c.setAttribute("role", "cell");
      row.append(c);
      return c;
    };
    const status = cell("c-status");
    status.append(el("span", "dot"), el("span", "word"), el("span", "health"));
    const id = cell("c-id");
    const pick = el("button", "link");
    pick.type = "button";
    pick.dataset.op = "select";
    id.append(pick);
    cell("c-pid");
    cell("c-uptime");
    cell("c-restarts");
    cell("c-msgs");
    for (const cls of ["c-cpu", "c-mem"]) {
      const c = cell(cls);
      c.append(el("span", "value"), sparkline());
    }
    const actions = cell("c-actions");
    for (const [op, label] of [["start", "Start"], ["stop", "Stop"], ["restart", "Restart"], ["follow", "Logs"], ["edit", "Edit"]]) {
      const b = el("button", `op-${op}`, label);
      b.type = "button";
      b.dataset.op = op;
      actions.append(b);
    }
    return row;
  }

  fill(row, id) {
    const a = this.agents.get(id);
    const s = a.s;
    row.dataset.id = id;
    row.dataset.status = s.status;
    row.classList.toggle("selected", id === this.selected);
    const [status, idc, pid, uptime, restarts, msgs, cpu, mem, actions] = row.children;
    const [, word, health] = status.children;
    setText(word, s.status);
    status.title = s.reason || "";
    // Under the status: the probe's verdict while something runs (none
    // without a probe); why it is not healthy in its tooltip.
    setText(health, s.health || "");
    health.dataset.health = s.health || "";
    health.title = s.health && s.health !== "healthy" && s.health_detail ? s.health_detail : "";
    const pick = idc.firstChild;
    setText(pick, id);
    pick.setAttribute("aria-label", `${id}: show its history`);
    setText(pid, s.pid == null ? "" : String(s.pid));
    setText(uptime, duration(this.uptime(a)));
    setText(restarts, String(s.restarts));
    setText(msgs, s.msg_count_24h == null ? "—" : String(s.msg_count_24h));
    const r = LIVE.has(s.status) ? s.resources : null;
    setText(cpu.firstChild, r ? `${r.cpu_pct.toFixed(1)}%` : "");
    setText(mem.firstChild, r ? bytes(r.rss_bytes) : "");
    draw(cpu.lastChild, r ? a.cpu : []);
    draw(mem.lastChild, r ? a.mem : []);
    const [start, stop, restart, follow, edit] = actions.children;
    edit.hidden = !this.canEdit;
    edit.setAttribute("aria-label", `edit the table of ${id}`);
    const off = !this.canOperate || a.busy !== null;
    start.disabled = off || s.status === "running";
    stop.disabled = off || s.status === "stopped";
    restart.disabled = off;
    for (const b of [start, stop, restart]) {
      b.setAttribute("aria-label", `${b.dataset.op} ${id}`);
      b.classList.toggle("busy", a.busy === b.dataset.op);
    }
    const followed = this.actions.isFollowed(id);
    follow.setAttribute("aria-pressed", String(followed));
    follow.setAttribute("aria-label", `follow the log of ${id}`);
  }

  uptime(a) {
    if (a.base == null || !LIVE.has(a.s.status)) return null;
    return a.base + (performance.now() - a.baseAt) / 1000;
  }

  /** Uptime counts on locally, once a second, in the rows shown. */
  tick() {
    for (const [id, row] of this.shown) {
      const a = this.agents.get(id);
      if (a) setText(row.children[3], duration(this.uptime(a)));
    }
  }

  click(e) {
    const b = e.target.closest("button[data-op]");
    if (!b || b.disabled) return;
    const id = b.closest(".row").dataset.id;
    const op = b.dataset.op;
    if (op === "select") this.actions.select(id);
    else if (op === "edit") this.actions.edit(id);
    else if (op === "follow") {
      this.actions.follow(id);
      this.changed(false);
    } else this.actions.control(id, op);
  }
}

function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 60 16");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("spark");
  svg.append(document.createElementNS(SVG, "polyline"));
  return svg;
}

function draw(svg, samples) {
  const line = svg.firstChild;
  if (samples.length < 2) {
    line.setAttribute("points", "");
    return;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of samples) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (hi === lo) {
    line.setAttribute("points", `0,8 60,8`);
    return;
  }
  const span = hi - lo;
  const step = 60 / (SAMPLES - 1);
  const x0 = 60 - (samples.length - 1) * step;
  let points = "";
  samples.forEach((v, i) => {
    points += `${(x0 + i * step).toFixed(1)},${(15 - ((v - lo) / span) * 14).toFixed(1)} `;
  });
  line.setAttribute("points", points);
}
