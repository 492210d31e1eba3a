// The Logs panel: one or several agents followed live through one
// EventSource on /sse/logs. Each line's event id is `agent:cursor`; the
// cursors are kept, and every new stream (after an error, a daemon restart,
// or a change of the agents followed) starts with `after=` them, so no line
// is missed or shown twice.

import { Stream, sendMessage, url } from "./api.js";
import { el, setText } from "./util.js";

/** Lines kept in the page; older ones go. */
const MAX_LINES = 2000;
/** Recent lines shown when an agent is first followed. */
const TAIL = 100;

/**
 * The colour class of an agent's name, `a0` to `a7`: the same for an id
 * whatever else is followed, as the CLI's (FNV-1a of the id picks it).
 */
export function agentColor(agent) {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(agent)) {
    h = Math.imul(h ^ b, 0x01000193) >>> 0;
  }
  return `a${h % 8}`;
}

export class LogsPanel {
  constructor() {
    this.box = document.getElementById("logs-lines");
    this.following = document.getElementById("logs-following");
    this.state = document.getElementById("logs-state");
    this.pauseButton = document.getElementById("logs-pause");
    this.filterBox = document.getElementById("logs-filter");
    this.agents = []; // followed, in the order chosen
    this.cursors = new Map(); // agent -> cursor (text, as sent)
    this.queue = []; // lines not drawn yet (a frame's worth, or held while paused)
    this.held = 0; // lines dropped while paused
    this.paused = false;
    this.stick = true;
    this.frame = 0;
    this.stream = null;
    this.live = false;
    this.canSend = false;
    this.sendForm = document.getElementById("logs-send");
    this.sendText = document.getElementById("logs-send-text");
    this.sendNote = document.getElementById("logs-send-note");
    this.sendForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });

    this.pauseButton.addEventListener("click", () => this.pause(!this.paused));
    this.filterBox.addEventListener("input", () => this.refilter());
    document.getElementById("logs-end").addEventListener("click", () => this.toEnd());
    document.getElementById("logs-clear").addEventListener("click", () => this.box.replaceChildren());
    this.box.addEventListener("scroll", () => {
      this.stick = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 8;
    });
  }

  /** Whether the key may write to agents' stdin (operate and admin). */
  setSender(on) {
    this.canSend = on;
    this.showSender();
  }

  /** The input line writes to the agent followed last. */
  target() {
    return this.agents.length ? this.agents[this.agents.length - 1] : null;
  }

  showSender() {
    const t = this.target();
    this.sendForm.hidden = !this.canSend || !t;
    setText(document.getElementById("logs-send-agent"), t || "");
  }

  async send() {
    const id = this.target();
    const text = this.sendText.value;
    if (!id || !text) return;
    const button = document.getElementById("logs-send-button");
    button.disabled = true;
    try {
      await sendMessage(id, text);
      this.sendText.value = "";
      setText(this.sendNote, `sent to ${id}`);
    } catch (e) {
      setText(this.sendNote, e.message);
    } finally {
      button.disabled = false;
    }
  }

  isFollowed(id) {
    return this.agents.includes(id);
  }

  /** Follows `id`, or stops following it. */
  follow(id) {
    if (this.isFollowed(id)) {
      this.agents = this.agents.filter((a) => a !== id);
      this.cursors.delete(id);
    } else {
      this.agents.push(id);
    }
    setText(this.following, this.agents.length ? this.agents.join(", ") : "none");
    this.showSender();
    this.connect();
  }

  makeUrl() {
    const q = new URLSearchParams();
    for (const a of this.agents) q.append("agent", a);
    q.set("n", String(TAIL));
    const after = this.agents.filter((a) => this.cursors.has(a)).map((a) => `${a}:${this.cursors.get(a)}`);
    if (after.length) q.set("after", after.join(","));
    return url(`sse/logs?${q}`);
  }

  connect() {
    if (!this.agents.length) {
      this.disconnect();
      return;
    }
    if (this.stream) {
      this.stream.restart();
      return;
    }
    this.stream = new Stream(
      () => this.makeUrl(),
      {
        line: (e) => this.line(e),
        gap: (e) => this.gap(e),
      },
      (open) => {
        this.live = open;
        this.showState();
      },
    );
  }

  /** Ends the stream; the lines and cursors stay, to resume from. */
  disconnect() {
    if (this.stream) this.stream.close();
    this.stream = null;
    this.live = false;
    this.showState();
  }

  /** Forgets everything (sign-out). */
  reset() {
    this.disconnect();
    this.agents = [];
    this.cursors.clear();
    this.queue = [];
    this.box.replaceChildren();
    setText(this.following, "none");
    this.showSender();
  }

  cursorOf(e) {
    const i = e.lastEventId.lastIndexOf(":");
    if (i > 0) this.cursors.set(e.lastEventId.slice(0, i), e.lastEventId.slice(i + 1));
  }

  line(e) {
    this.cursorOf(e);
    const { agent, line } = JSON.parse(e.data);
    this.add(agent, line, "");
  }

  gap(e) {
    this.cursorOf(e);
    const g = JSON.parse(e.data);
    this.add(g.agent, `… lines lost here (rotated away before they were sent: bytes ${g.from} to ${g.to}) …`, "gap");
  }

  add(agent, text, cls) {
    this.queue.push({ agent, text, cls });
    if (this.queue.length > MAX_LINES) {
      this.held += this.queue.length - MAX_LINES;
      this.queue.splice(0, this.queue.length - MAX_LINES);
    }
    if (this.paused) this.showState();
    else if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** The colour class of an agent's name: `a0` to `a7`. */
  color(agent) {
    return agentColor(agent);
  }

  flush() {
    this.frame = 0;
    if (this.paused) return;
    const f = this.filterBox.value;
    const frag = document.createDocumentFragment();
    if (this.held) {
      frag.append(el("div", "line gap", `… ${this.held} lines not shown (held too long while paused) …`));
      this.held = 0;
    }
    for (const { agent, text, cls } of this.queue) {
      const row = el("div", `line ${cls}`);
      row.dataset.agent = agent;
      row.append(el("span", `who ${this.color(agent)}`, agent), el("span", "text", text));
      if (f && !text.includes(f)) row.hidden = true;
      frag.append(row);
    }
    this.queue = [];
    this.box.append(frag);
    const extra = this.box.childElementCount - MAX_LINES;
    for (let i = 0; i < extra; i++) this.box.firstElementChild.remove();
    if (this.stick) this.box.scrollTop = this.box.scrollHeight;
    this.showState();
  }

  pause(on) {
    this.paused = on;
    this.pauseButton.setAttribute("aria-pressed", String(on));
    setText(this.pauseButton, on ? "Resume" : "Pause");
    if (!on) this.flush();
    this.showState();
  }

  refilter() {
    const f = this.filterBox.value;
    for (const row of this.box.children) {
      row.hidden = Boolean(f) && !row.lastChild.textContent.includes(f);
    }
  }

  toEnd() {
    this.stick = true;
    this.box.scrollTop = this.box.scrollHeight;
  }

  showState() {
    let s = !this.agents.length ? "" : this.live ? "live" : "reconnecting…";
    if (this.paused) s += ` · paused, ${this.queue.length} lines waiting`;
    setText(this.state, s);
  }
}
