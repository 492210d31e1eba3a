// The Fleet panel (a daemon with `[fleet] view = true`): every host heard
// from over NATS, live from /sse/fleet, each linking to its own dashboard.
// Hidden on a daemon without a view (GET /fleet answers 404).

import { request, Stream, url } from "./api.js";
import { el, setText } from "./util.js";

export class FleetPanel {
  constructor() {
    this.section = document.getElementById("fleet");
    this.rows = document.getElementById("fleet-rows");
    this.count = document.getElementById("fleet-count");
    this.hosts = new Map(); // name -> FleetHost
    this.stream = null;
  }

  /** Shows the panel if this daemon has a fleet view. */
  async connect() {
    try {
      const hosts = await request("GET", "fleet");
      this.replace(hosts);
    } catch {
      this.section.hidden = true;
      return; // no view here (404), or not now
    }
    this.section.hidden = false;
    if (this.stream) return;
    this.stream = new Stream(
      () => url("sse/fleet"),
      {
        snapshot: (e) => this.replace(JSON.parse(e.data)),
        host: (e) => {
          const h = JSON.parse(e.data);
          this.hosts.set(h.host, h);
          this.draw();
        },
      },
      () => {},
    );
  }

  disconnect() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  replace(list) {
    this.hosts = new Map(list.map((h) => [h.host, h]));
    this.draw();
  }

  draw() {
    const names = [...this.hosts.keys()].sort();
    setText(this.count, `(${names.length})`);
    this.rows.replaceChildren(
      ...names.map((name) => {
        const h = this.hosts.get(name);
        const tr = el("tr", h.stale ? "stale" : "");
        tr.dataset.host = name;
        const link = el("a", "", name);
        // Only the host's own address, as it announced it, under /ui/.
        try {
          const u = new URL("ui/", h.url.endsWith("/") ? h.url : `${h.url}/`);
          if (u.protocol === "https:" || u.protocol === "http:") link.href = u.href;
        } catch {
          // not a URL: shown without a link
        }
        link.rel = "noopener";
        const cell = (child) => {
          const td = el("td", "");
          td.append(child);
          return td;
        };
        const counts = Object.entries(h.by_status)
          .filter(([, n]) => n > 0)
          .map(([s, n]) => `${n} ${s}`)
          .join(", ");
        tr.append(
          cell(link),
          cell(document.createTextNode(String(h.agents))),
          cell(document.createTextNode(counts || "none")),
          cell(document.createTextNode(h.version)),
          cell(document.createTextNode(h.stale ? `stale (last heard ${h.last_heartbeat})` : h.last_heartbeat)),
        );
        return tr;
      }),
    );
  }
}
