// The dashboard: sign-in, then the four panels, all live from the daemon's
// event streams (nothing is polled). The key is typed once, sent once as a
// bearer header to POST /session, and forgotten: from then on the
// HttpOnly session cookie, which no script can read, does the rest.

import * as api from "./api.js";
import { AgentsPanel } from "./agents.js";
import { LogsPanel } from "./logs.js";
import { MessagesPanel } from "./messages.js";
import { StatusPanel } from "./status.js";
import { Editor } from "./editor.js";
import { FleetPanel } from "./fleet.js";
import { setText } from "./util.js";

const $ = (id) => document.getElementById(id);

let session = null; // { who, agents, status, stream, healthTimer }
const logs = new LogsPanel();
const statusPanel = new StatusPanel();
const editor = new Editor((text) => toast(text));
const fleet = new FleetPanel();
const messages = new MessagesPanel();

// --- sign-in ---

function showSignIn(note) {
  $("dash").hidden = true;
  $("signin").hidden = false;
  setText($("signin-note"), note || "");
  $("key").focus();
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  input.value = ""; // forgotten: never kept by the page
  if (!key) return;
  $("signin-button").disabled = true;
  setText($("signin-error"), "");
  try {
    const who = await api.signIn(key);
    start(who);
  } catch (err) {
    setText($("signin-error"), err.status === 401 ? "That key was refused." : `Cannot sign in: ${err.message}`);
    input.focus();
  } finally {
    $("signin-button").disabled = false;
  }
});

$("signout").addEventListener("click", async () => {
  try {
    await api.signOut();
  } catch {
    // signed out anyway, as far as this page goes
  }
  stop(true);
  showSignIn("Signed out.");
});

// A 401 anywhere: the session is over (expired, revoked, or the daemon
// forgot it). The logs keep their place and resume after signing in again.
api.onSignedOut(() => {
  if (!session) return;
  stop(false);
  showSignIn("Your session has ended: sign in again. The logs will go on where they stopped.");
});

// --- the dashboard ---

function start(who) {
  stop(false);
  $("signin").hidden = true;
  $("dash").hidden = false;
  setText($("conn-url"), api.daemonUrl());
  setText($("conn-who"), `${who.name} (${who.role})`);
  const agents = new AgentsPanel({
    control,
    select: (id) => {
      agents.select(id);
      statusPanel.select(id);
      messages.select(id);
    },
    follow: (id) => logs.follow(id),
    isFollowed: (id) => logs.isFollowed(id),
    edit: (id) => editor.edit(id),
    create: () => editor.create(),
  });
  agents.setRole(who.role, who.edits);
  logs.setSender(who.role === "operate" || who.role === "admin");
  session = { who, agents, stream: null, healthTimer: 0, healthAgain: false };
  session.stream = new api.Stream(
    () => api.url("sse/status"),
    {
      snapshot: (e) => {
        agents.snapshot(JSON.parse(e.data));
        refreshHealth();
      },
      status: (e) => {
        const ev = JSON.parse(e.data);
        agents.status(ev);
        statusPanel.event(ev);
        refreshHealth();
      },
      summary: (e) => agents.summary(JSON.parse(e.data)),
      health: (e) => {
        const ev = JSON.parse(e.data);
        agents.health(ev);
        statusPanel.health(ev);
      },
      resources: (e) => agents.resources(JSON.parse(e.data)),
      removed: (e) => agents.removed(JSON.parse(e.data)),
    },
    live,
  );
  logs.connect();
  messages.connect();
  fleet.connect();
  refreshHealth();
}

function stop(forget) {
  if (session) {
    session.stream.close();
    session.agents.destroy();
    fleet.disconnect();
    clearTimeout(session.healthTimer);
    session = null;
  }
  if (forget) {
    logs.reset();
    statusPanel.reset();
    messages.reset();
  } else {
    logs.disconnect();
    messages.disconnect();
  }
  live(false);
}

function live(on) {
  const e = $("conn-live");
  e.classList.toggle("off", !on);
  setText(e, on ? "live" : session ? "reconnecting…" : "off");
}

/**
 * Health and the config error are not streamed: they are read on each
 * (re)connect, on status events and after a start, stop or restart (a
 * reload that failed shows there), at most every 5 s: one asked for
 * sooner is made when the 5 s are up.
 */
function refreshHealth() {
  if (!session) return;
  if (session.healthTimer) {
    session.healthAgain = true;
    return;
  }
  session.healthAgain = false;
  session.healthTimer = setTimeout(() => {
    if (!session) return;
    session.healthTimer = 0;
    if (session.healthAgain) refreshHealth();
  }, 5000);
  api.health().then(showHealth, () => {});
}

function showHealth(h) {
  setText($("conn-version"), h.version);
  const word = $("conn-health");
  setText(word, h.status);
  word.className = h.status === "ok" ? "ok" : "degraded";
  const banner = $("config-error");
  banner.hidden = !h.config_error;
  setText(banner, h.config_error ? `The config file has an error; the daemon runs the previous one: ${h.config_error}` : "");
  const problems = $("problems");
  problems.replaceChildren();
  for (const p of h.problems || []) {
    const li = document.createElement("li");
    li.textContent = p;
    problems.append(li);
  }
}

// --- start / stop / restart ---

async function control(id, op) {
  if (op === "stop" && !(await confirmStop(id))) return;
  const agents = session && session.agents;
  if (!agents) return;
  agents.setBusy(id, op);
  try {
    await api.control(id, op);
  } catch (e) {
    toast(`${op} ${id}: ${e.message}`);
  } finally {
    agents.setBusy(id, null);
    refreshHealth();
  }
}

function confirmStop(id) {
  const dialog = $("confirm");
  setText($("confirm-text"), `Stop ${id}? Its processes are ended and it stays stopped until started.`);
  setText($("confirm-ok"), `Stop ${id}`);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

let toastTimer = 0;
function toast(text) {
  const t = $("toast");
  setText(t, text);
  t.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove("shown"), 6000);
}

// --- on load: already signed in (the cookie) or not ---

api.whoami().then(start, () => showSignIn(""));
