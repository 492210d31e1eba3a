// The Status panel: the live feed of status and health changes (from
// /sse/status) and the selected agent's history (GET
// /agents/{id}/history, then live).

import { history } from "./api.js";
import { el, time } from "./util.js";

/** Entries kept in each list. */
const MAX_FEED = 200;

export class StatusPanel {
  constructor() {
    this.feed = document.getElementById("feed");
    this.list = document.getElementById("history");
    this.title = document.getElementById("history-agent");
    this.selected = null;
  }

  reset() {
    this.selected = null;
    this.feed.replaceChildren();
    this.list.replaceChildren();
    this.title.textContent = "(select an agent)";
  }

  /** A `status` event. */
  event(ev) {
    prepend(this.feed, item(ev.at, ev.agent_id, ev.old_status, ev.new_status, ev.pid, null, null));
    if (ev.agent_id === this.selected) {
      prepend(this.list, item(ev.at, null, ev.old_status, ev.new_status, ev.pid, null, null));
    }
  }

  /**
   * A `health` event. As in the history, only what the status does not say
   * already: healthy or unhealthy (starting and none come with a start or
   * a stop).
   */
  health(ev) {
    if (ev.new_health !== "healthy" && ev.new_health !== "unhealthy") return;
    const why = ev.new_health === "unhealthy" ? ev.detail : null;
    prepend(this.feed, healthItem(ev.at, ev.agent_id, ev.old_health, ev.new_health, why));
    if (ev.agent_id === this.selected) {
      prepend(this.list, healthItem(ev.at, null, ev.old_health, ev.new_health, why));
    }
  }

  async select(id) {
    this.selected = id;
    this.title.textContent = id;
    this.list.replaceChildren(el("li", "note", "loading…"));
    try {
      const entries = await history(id);
      if (this.selected !== id) return;
      this.list.replaceChildren(
        ...entries.map((h) =>
          h.health
            ? healthItem(h.at, null, null, h.health, h.reason)
            : item(h.at, null, h.old_status, h.new_status, h.pid, h.exit, h.reason),
        ),
      );
      if (!entries.length) this.list.append(el("li", "note", "no status change recorded"));
    } catch (e) {
      if (this.selected === id) this.list.replaceChildren(el("li", "error", e.message));
    }
  }
}

function prepend(list, li) {
  list.prepend(li);
  while (list.childElementCount > MAX_FEED) list.lastElementChild.remove();
}

function item(at, agent, from, to, pid, exit, reason) {
  const li = el("li");
  li.append(el("time", "", time(at)));
  if (agent) li.append(el("span", "agent", agent));
  li.append(el("span", `st ${from}`, from), el("span", "arrow", "→"), el("span", `st ${to}`, to));
  if (pid != null) li.append(el("span", "pid", `pid ${pid}`));
  if (exit) {
    const how = exit.signal ? `killed by ${exit.signal}` : `exit ${exit.code}`;
    li.append(el("span", "exit", how));
  }
  if (reason) li.append(el("span", "reason", reason));
  return li;
}

/** A change of health: `from` may be unknown (a history row says only the new one). */
function healthItem(at, agent, from, to, detail) {
  const li = el("li", "health-change");
  li.append(el("time", "", time(at)));
  if (agent) li.append(el("span", "agent", agent));
  li.append(el("span", "what", "health"));
  if (from) li.append(el("span", `hl ${from}`, from), el("span", "arrow", "→"));
  li.append(el("span", `hl ${to}`, to));
  if (detail) li.append(el("span", "reason", detail));
  return li;
}
