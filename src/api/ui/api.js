// The daemon's API, reached from the page's own origin with the session
// cookie. Every path is relative to /ui/, so the page also works behind a
// proxy that mounts the daemon under a prefix.

/** The URL of an API path such as "agents" or "sse/status". */
export function url(path) {
  return new URL(`../${path}`, document.baseURI).href;
}

/** The daemon's own address, as this page sees it. */
export function daemonUrl() {
  return url("").replace(/\/$/, "");
}

const signedOut = new EventTarget();

/** Calls `f` whenever a request finds the session gone (401). */
export function onSignedOut(f) {
  signedOut.addEventListener("out", () => f());
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * A request with the session cookie (and `body`, if given); a 401 signs
 * the page out. Its answer as `{ res, body }`, `body` parsed as JSON
 * unless `text` is set; an error status throws an ApiError.
 */
async function exchange(method, path, headers = {}, body = undefined, text = false) {
  const res = await fetch(url(path), { method, headers, body, credentials: "same-origin", cache: "no-store" });
  if (res.status === 401 && !headers.Authorization) {
    signedOut.dispatchEvent(new Event("out"));
  }
  if (res.status === 204) return { res, body: null };
  if (res.ok && text) return { res, body: await res.text() };
  let parsed = null;
  try {
    parsed = await res.json();
  } catch {
    parsed = null;
  }
  if (!res.ok) {
    const e = parsed && parsed.error ? parsed.error : { code: String(res.status), message: res.statusText };
    const err = new ApiError(res.status, e.code, e.message);
    err.etag = res.headers.get("ETag");
    throw err;
  }
  return { res, body: parsed };
}

/** A JSON request with the session cookie; a 401 signs the page out. */
export async function request(method, path, headers = {}, body = undefined) {
  return (await exchange(method, path, headers, body)).body;
}

/** Signs in with the key (sent once, as a bearer header); the daemon sets the cookie. */
export function signIn(key) {
  return request("POST", "session", { Authorization: `Bearer ${key}` });
}

export const signOut = () => request("DELETE", "session");
export const whoami = () => request("GET", "whoami");
export const health = () => request("GET", "health");
export const history = (id) => request("GET", `agents/${encodeURIComponent(id)}/history?limit=50`);
export const control = (id, op) => request("POST", `agents/${encodeURIComponent(id)}/${op}`);

/** A line for the agent's stdin. */
export const sendMessage = (id, text) =>
  request("POST", `agents/${encodeURIComponent(id)}/message`, { "Content-Type": "application/json" }, JSON.stringify({ text }));

/**
 * An agent's table as the config file has it, as TOML: `{ text, etag }`,
 * `text` null when the file has no such agent (its `etag` is the file's
 * all the same, to create it with).
 */
export async function agentConfig(id) {
  const path = `agents/${encodeURIComponent(id)}/config`;
  try {
    const { res, body } = await exchange("GET", path, { Accept: "application/toml" }, undefined, true);
    return { text: body, etag: res.headers.get("ETag") };
  } catch (e) {
    if (e.status === 404 && e.etag) return { text: null, etag: e.etag };
    throw e;
  }
}

/** Creates or replaces an agent with its table `text` (TOML), if the file is still the version `etag` names. */
export const putAgentConfig = (id, text, etag) =>
  request("PUT", `agents/${encodeURIComponent(id)}/config`, { "Content-Type": "application/toml", "If-Match": etag }, text);

/**
 * The daemon sends a `ping` event on every stream at least every 20 s;
 * a stream that brings no event for this long is taken for dead (a
 * half-open connection: keep-alive comments never reach the page).
 */
export const SILENT_MS = 50000;

/**
 * An EventSource that comes back by itself. The browser's own retries are
 * not used: on any error, or when no event (a `ping` at least) came for
 * SILENT_MS, the stream is closed, the session checked (a 401 signs out),
 * and a new one opened with `makeUrl()` after a backoff, so that the URL
 * can carry where to resume (`after=` cursors).
 *
 * `handlers` maps event names to functions; `onState(open)` tells the
 * connection state.
 */
export class Stream {
  constructor(makeUrl, handlers, onState) {
    this.makeUrl = makeUrl;
    this.handlers = handlers;
    this.onState = onState;
    this.es = null;
    this.timer = 0;
    this.delay = 250;
    this.closed = false;
    this.watchdog = 0;
    this.open();
  }

  open() {
    if (this.closed) return;
    const es = new EventSource(this.makeUrl());
    this.es = es;
    for (const [name, f] of Object.entries(this.handlers)) {
      es.addEventListener(name, (e) => {
        this.alive(es);
        f(e);
      });
    }
    es.addEventListener("ping", () => this.alive(es));
    es.onopen = () => {
      this.delay = 250;
      this.alive(es);
      this.onState(true);
    };
    es.onerror = () => this.lost(es);
    this.alive(es);
  }

  /** Heard from `es`: it is taken for dead only after SILENT_MS more. */
  alive(es) {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.lost(es), SILENT_MS);
  }

  /** `es` failed or went silent: closed, and another opened later. */
  lost(es) {
    es.close();
    if (this.es !== es || this.closed) return;
    clearTimeout(this.watchdog);
    this.es = null;
    this.onState(false);
    this.retry();
  }

  retry() {
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      if (this.closed) return;
      try {
        await whoami(); // a 401 signs out, and close() ends this
      } catch {
        // down, or a network error: try again later
      }
      if (this.closed) return;
      this.delay = Math.min(this.delay * 2, 5000);
      this.open();
    }, this.delay);
  }

  /** Reopens now (e.g. with another URL). */
  restart() {
    if (this.es) this.es.close();
    this.es = null;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    this.open();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.es) this.es.close();
    this.es = null;
  }
}
