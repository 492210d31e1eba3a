// The Messages panel: the rows of the selected agent's messages query
// (`stats.messages`), live from /sse/agents/{id}/messages; shown only for
// an agent that has one. Each row's event id is its cursor; a new stream
// (after an error or a daemon restart) starts with `after=` it, so no row
// is missed or shown twice, as the Logs panel does with its lines.

import { request, Stream, url } from "./api.js";
import { el, setText } from "./util.js";

/** Rows kept in the page; older ones go. */
const MAX_ROWS = 1000;
/** Recent rows shown when an agent is first selected. */
const TAIL = 50;

export class MessagesPanel {
  constructor() {
    this.section = document.getElementById("messages");
    this.agentName = document.getElementById("messages-agent");
    this.state = document.getElementById("messages-state");
    this.box = document.getElementById("messages-rows");
    this.agent = null; // selected, with a messages query
    this.cursor = null; // the last row's, as sent
    this.problem = ""; // the last query_error, until a row comes
    this.stream = null;
    this.live = false;
    this.stick = true;
    this.box.addEventListener("scroll", () => {
      this.stick = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 8;
    });
  }

  /** Shows the messages of `id`, if it has a messages query. */
  async select(id) {
    if (id === this.agent) return;
    this.reset();
    this.agent = id;
    const has = await hasMessages(id);
    if (this.agent !== id) return; // another was selected meanwhile
    if (!has) {
      this.agent = null;
      return;
    }
    setText(this.agentName, id);
    this.section.hidden = false;
    this.connect();
  }

  makeUrl() {
    const q = new URLSearchParams();
    if (this.cursor != null) q.set("after", this.cursor);
    else q.set("n", String(TAIL));
    return url(`sse/agents/${encodeURIComponent(this.agent)}/messages?${q}`);
  }

  connect() {
    if (!this.agent || this.stream) return;
    this.stream = new Stream(
      () => this.makeUrl(),
      {
        message: (e) => this.row(e),
        query_error: (e) => {
          this.problem = JSON.parse(e.data).message;
          this.showState();
        },
      },
      (open) => {
        this.live = open;
        this.showState();
        if (!open) this.recheck();
      },
    );
  }

  /**
   * The stream was lost: a stream also ends when its agent is removed or
   * its query changes. Without a query any more, the panel goes.
   */
  async recheck() {
    const id = this.agent;
    if (id && (await hasMessages(id)) === false && this.agent === id) this.reset();
  }

  /** Ends the stream; the rows and the cursor stay, to resume from. */
  disconnect() {
    if (this.stream) this.stream.close();
    this.stream = null;
    this.live = false;
    this.showState();
  }

  /** Forgets everything (another agent, or sign-out). */
  reset() {
    this.disconnect();
    this.agent = null;
    this.cursor = null;
    this.problem = "";
    this.box.replaceChildren();
    this.section.hidden = true;
  }

  row(e) {
    this.cursor = e.lastEventId;
    this.problem = "";
    const data = JSON.parse(e.data);
    const row = el("div", "line msg");
    row.dataset.cursor = e.lastEventId;
    // Every column, in the query's order, as text; its name in the tooltip.
    for (const [name, value] of Object.entries(data)) {
      const cell = el("span", name === "body" ? "text" : "who", value == null ? "" : String(value));
      cell.title = name;
      cell.dataset.column = name;
      row.append(cell);
    }
    this.box.append(row);
    const extra = this.box.childElementCount - MAX_ROWS;
    for (let i = 0; i < extra; i++) this.box.firstElementChild.remove();
    if (this.stick) this.box.scrollTop = this.box.scrollHeight;
    this.showState();
  }

  showState() {
    let s = !this.agent ? "" : this.live ? "live" : "reconnecting…";
    if (this.problem) s += ` · the query failed: ${this.problem}`;
    setText(this.state, s);
  }
}

/** Whether agent `id` has a messages query; null when the daemon cannot say. */
async function hasMessages(id) {
  try {
    const detail = await request("GET", `agents/${encodeURIComponent(id)}`);
    return Boolean(detail.config && detail.config.has_messages);
  } catch (e) {
    return e.status === 404 ? false : null;
  }
}
