// wsgi_channels browser client: one ES module, plain JavaScript, no build step.
//
//   import { connect } from "/static/wsgi_channels/channels.js";
//   const socket = connect("/ws/chat/lobby/");
//   socket.addEventListener("json", (event) => console.log(event.detail));
//   socket.sendJSON({ text: "hello" });
//
// What it does for you:
// - resolves a path against the page's origin (ws: for http:, wss: for https:);
//   a function instead of a path is called before every attempt (it may return a
//   Promise), so a page can fetch a fresh signed URL when the last token expired;
// - reconnects with full-jitter exponential backoff: before attempt n it waits a
//   random delay in [0, min(maxDelay, baseDelay * 2^n)); the attempt count goes
//   back to 0 only after a connection stayed open `stableAfter` ms, so a server
//   that accepts and drops at once is not hammered;
// - queues sends made while (re)connecting, up to `maxQueue` messages (the oldest
//   is dropped and a "drop" event fired when full), and flushes them on open;
// - pauses while the browser is offline and retries at once when it is back;
// - follows the close-code contract with the sidecar (see CLOSE_CODES below):
//   some codes mean "try again later", others mean "stop, retrying cannot help".
//
// Events (an EventTarget): "open", "message" (detail: the data), "json" (detail:
// the parsed object, for text frames holding JSON), "close" (detail: {code,
// reason, willReconnect, delay}), "reconnecting" (detail: {attempt, delay}),
// "stop" (detail: {code, reason}), "drop" (detail: the dropped message),
// "error" (detail: the error).
//
// Resume after reconnect (group history) and presence, with the wsgi_channels sidecar:
//
//   const socket = connect("/ws/chat/", { positions: { "chat.lobby": {"epoch": "Xy3k9Qa2", "offset": 1542} } });
//   socket.on("resume", ({ group, recovered, reason }) => {   // after every (re)connect, per history group
//     if (!recovered) reloadFromTheServer(group);                // reason: "epoch", "gap", "too_many", ...
//   });
//   socket.on("join", ({ group, connId, user, info, since }) => ...);  // presence: someone came
//   socket.on("leave", ({ group, connId }) => ...);                    // ... and left
//   socket.on("count", ({ group, clients, users }) => ...);           // after every presence change
//   const now = await socket.presence("room.lobby");       // the list, from the app's presence view
//
// The client always opts in with `_wsc=1` (`resume: false` opts out: then the URL and the frames
// are exactly a raw WebSocket's): the sidecar then announces each history message's position in
// a control frame (a text frame starting with NUL, never shown to "message" listeners), and the
// client sends the last position of each group it saw on every reconnect
// (`_wsc_r=GROUP:EPOCH:OFFSET`) and drops a message it already had (same epoch, offset not
// above the last). `positions` (as the adapters' channels_position renders them) resume the
// first connect too, so nothing published between page render and connect is lost.
// `socket.position(group)` is the last position seen.
//
// "resume" (detail {group, recovered, reason}): recovered true (reason null) when every missed
// message came, once, in order; false when some cannot be, with reason "epoch" (the group's
// stream restarted: its history may have lost messages), "gap" (older than the kept history),
// "too_many" (more than the sidecar replays), "no-position" (a group joined without any
// position, with a layer whose join notices carry none: nothing to resume from; the shipped
// layers give the position of the join), or the sidecar's own word ("unavailable", "timeout",
// "not-joined"). The lower-level "recovered" and "gap" events carry the sidecar's
// frames as they are (gap's reason is the sidecar's `why`, "trimmed" for "gap").
//
// Node 20+: runs unchanged with Node's global WebSocket (Node 22; `--experimental-websocket` on
// Node 20) given an absolute ws:// URL. Node 20 fires "error" and never "close" when a connect is
// refused; an "error" not followed by "close" within `errorCloseAfter` ms counts as close 1006.

/**
 * The close-code contract between this client and the wsgi_channels sidecar.
 *
 * STOP codes end the connection for good: the server or the app refused on
 * purpose and a retry would be refused again.
 * - 1000 normal closure: the app closed the socket deliberately.
 * - 1002 protocol error, 1003 unsupported data, 1007 invalid payload: a bug on
 *   one side; retrying would repeat it.
 * - 1008 policy violation: Origin refused or authentication required/failed.
 * - 1009 message too big: this client sent more than the server accepts.
 * - 1010 mandatory extension missing.
 * - 4000-4499: application codes meaning "stop" (for example 4003 forbidden).
 *
 * Every other code reconnects: 1001 going away (sidecar restart or shutdown),
 * 1005 no status, 1006 abnormal closure (network loss, refused handshake),
 * 1011 internal error, 1012 service restart, 1013 try again later (a full
 * channel), 1014 bad gateway, 1015 TLS failure, and 4500-4999, application
 * codes meaning "try again".
 */
export const STOP_CODES = Object.freeze([1000, 1002, 1003, 1007, 1008, 1009, 1010]);

/** True when a close with `code` should be followed by a reconnect. */
export function shouldReconnect(code) {
  if (STOP_CODES.includes(code)) return false;
  if (code >= 4000 && code <= 4499) return false;
  return true;
}

/**
 * Full-jitter exponential backoff: a random delay in [0, min(max, base * 2^attempt)).
 * `random` is a function returning [0, 1), Math.random by default.
 */
export function backoffDelay(attempt, baseDelay, maxDelay, random = Math.random) {
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Turn `path` into a WebSocket URL on the page's origin: "/ws/x" on
 * https://example.com becomes "wss://example.com/ws/x". Absolute ws(s)://
 * URLs are returned unchanged; http(s):// URLs get their scheme swapped.
 */
export function wsURL(path, location = globalThis.location) {
  if (/^wss?:\/\//i.test(path)) return path;
  if (/^https?:\/\//i.test(path)) return path.replace(/^http/i, "ws");
  if (!location) throw new Error(`wsURL: relative path ${JSON.stringify(path)} needs a page location`);
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

const DEFAULTS = Object.freeze({
  protocols: undefined,
  baseDelay: 500, // ms: the first retry waits up to this long
  maxDelay: 30000, // ms: the cap on the backoff ceiling
  stableAfter: 5000, // ms open before the attempt count resets
  maxQueue: 100, // messages buffered while not connected
  maxAttempts: Infinity, // give up ("stop" with code 0) after this many failed attempts in a row
  reconnect: true,
  resume: true, // opt in to history positions, resume and presence frames (the sidecar's _wsc=1); false: a raw socket
  errorCloseAfter: 1000, // ms: an "error" with no "close" after it (Node 20) then counts as close 1006
  positions: null, // {group: {epoch, offset}}: where the page's data stands (channels_position)
  presenceURL: "/_wsgi_channels/presence/", // the app's presence view, read by presence(group)
});

/** The first character of a sidecar control frame (an app text frame starting with it comes escaped). */
const CONTROL_MARK = "\u0000";
const GROUP_RE = /^[a-zA-Z0-9\-_.]{1,200}$/;
const EPOCH_RE = /^[A-Za-z0-9_-]{1,16}$/;
/** Most groups one handshake may resume (the sidecar refuses more): the most recently updated are sent. */
export const MAX_RESUME_GROUPS = 32;

/** The "resume" event's reason for the sidecar's `why` of a gap frame. */
export const RESUME_REASONS = Object.freeze({ epoch: "epoch", trimmed: "gap", too_many: "too_many" });

/** `url` with the opt-in and resume parameters for `positions` ({group: {epoch, offset}}). */
export function resumeURL(url, positions) {
  const items = [];
  for (const [group, pos] of Object.entries(positions || {})) {
    if (!pos || !GROUP_RE.test(group) || !EPOCH_RE.test(String(pos.epoch))) continue;
    const offset = Number(pos.offset);
    if (!Number.isSafeInteger(offset) || offset < 0) continue;
    items.push(`${group}:${pos.epoch}:${offset}`);
  }
  items.splice(0, Math.max(0, items.length - MAX_RESUME_GROUPS)); // positions are kept oldest first
  const [base, hash] = String(url).split("#", 2);
  const kept = base.replace(/([?&])_wsc(_r)?(=[^&]*)?(?=&|$)/g, "$1").replace(/[?&]+$/, "").replace(/&&+/g, "&").replace("?&", "?");
  let params = "_wsc=1";
  if (items.length) params += `&_wsc_r=${items.join(",")}`;
  return `${kept}${kept.includes("?") ? "&" : "?"}${params}${hash !== undefined ? `#${hash}` : ""}`;
}

/** A WebSocket that reconnects, queues and speaks JSON. Create it with connect(). */
export class ChannelSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    // A function is asked for the URL before each attempt (a fresh connect token); a string is used as is.
    this._urlSource = typeof url === "function" ? url : null;
    this.url = this._urlSource ? null : url;
    this.attempt = 0; // failed attempts since the last stable connection
    this.queue = [];
    this.socket = null;
    this.stopped = false;
    this.optedIn = this.options.resume !== false;
    /** The last position seen per history group: {group: {epoch, offset}}. */
    this.positions = {};
    for (const [group, pos] of Object.entries(this.options.positions || {})) {
      if (pos && typeof pos === "object") this.positions[group] = { epoch: String(pos.epoch), offset: Number(pos.offset) };
    }
    this._next = null; // the position announced for the next message frame
    this._unplaced = new Set(); // history groups joined with no position known: a reconnect cannot resume them
    this._afterGap = new Set(); // groups whose position came from a gap frame on this connection
    this._opened = false;
    this._env = {
      WebSocket: options.WebSocket || globalThis.WebSocket,
      setTimeout: options.setTimeout || globalThis.setTimeout.bind(globalThis),
      clearTimeout: options.clearTimeout || globalThis.clearTimeout.bind(globalThis),
      random: options.random || Math.random,
      now: options.now || (() => Date.now()),
      window: "window" in options ? options.window : globalThis.window,
      navigator: "navigator" in options ? options.navigator : globalThis.navigator,
    };
    if (!this._env.WebSocket) throw new Error("ChannelSocket: no WebSocket implementation available");
    this._retryTimer = null;
    this._stableTimer = null;
    this._errorTimer = null;
    this._onOnline = () => this._online();
    this._onOffline = () => this._offline();
    const win = this._env.window;
    if (win && win.addEventListener) {
      win.addEventListener("online", this._onOnline);
      win.addEventListener("offline", this._onOffline);
    }
    if (this._isOffline()) {
      this._waitingForOnline = true;
    } else {
      this._open();
    }
  }

  /** True while the underlying socket is open. */
  get connected() {
    return !!this.socket && this.socket.readyState === 1;
  }

  /** Send a string, Blob or ArrayBuffer; queued (bounded) while not connected. */
  send(data) {
    if (this.stopped) throw new Error("ChannelSocket: send() after the connection stopped");
    if (this.connected) {
      this.socket.send(data);
      return true;
    }
    this.queue.push(data);
    while (this.queue.length > this.options.maxQueue) {
      const dropped = this.queue.shift();
      this._emit("drop", dropped);
    }
    return false;
  }

  /** The last position seen of history group `group` ({epoch, offset}), or null. */
  position(group) {
    const pos = this.positions[group];
    return pos ? { ...pos } : null;
  }

  /**
   * The members of presence group `group` now, from the app's presence view (served by the
   * adapters at `presenceURL`, on the page's origin, with the page's cookies):
   * {group, clients, users, members: [{id, user, info, since}]}. Rejects with an Error naming
   * the HTTP status (404: the app has not said who may read it; 403: not this user).
   */
  async presence(group) {
    const fetchFn = this.options.fetch || globalThis.fetch;
    const response = await fetchFn(this.options.presenceURL + encodeURIComponent(group), {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error(`presence(${JSON.stringify(group)}): HTTP ${response.status}`);
    return response.json();
  }

  /** Send `value` as a JSON text frame. */
  sendJSON(value) {
    return this.send(JSON.stringify(value));
  }

  /** Close for good (no reconnect). */
  close(code = 1000, reason = "") {
    this._stop(code, reason);
    if (this.socket && this.socket.readyState <= 1) this.socket.close(code, reason);
  }

  /** `socket.on("json", fn)` adds a listener receiving `event.detail`; returns a function removing it. */
  on(type, fn) {
    const listener = (event) => fn(event.detail, event);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _isOffline() {
    const nav = this._env.navigator;
    return !!nav && nav.onLine === false;
  }

  _open() {
    this._retryTimer = null;
    if (this.stopped) return;
    if (this._urlSource) {
      let url;
      try {
        url = this._urlSource();
      } catch (error) {
        this._urlFailed(error);
        return;
      }
      if (url && typeof url.then === "function") {
        url.then((value) => this._openURL(value), (error) => this._urlFailed(error));
        return;
      }
      this._openURL(url);
      return;
    }
    this._openURL(this.url);
  }

  _urlFailed(error) {
    // Fetching a URL failed (the app is down, say): a failed attempt, retried with the backoff.
    if (this.stopped) return;
    this._emit("error", error);
    this._closed(1006, `no URL: ${error && error.message ? error.message : error}`);
  }

  _openURL(url) {
    if (this.stopped) return;
    if (this._urlSource) url = wsURL(String(url), this.options.location || globalThis.location);
    this.url = url;
    if (this.optedIn) url = resumeURL(url, this.positions);
    this._next = null;
    this._afterGap.clear();
    let socket;
    try {
      socket = new this._env.WebSocket(url, this.options.protocols);
    } catch (error) {
      // A malformed URL or a blocked port: retrying would fail the same way.
      this._emit("error", error);
      this._stop(0, String(error && error.message ? error.message : error));
      return;
    }
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this._stableTimer = this._env.setTimeout(() => {
        this._stableTimer = null;
        this.attempt = 0;
      }, this.options.stableAfter);
      this._emit("open", { url: this.url });
      if (this._opened) {
        // Joined on an earlier connection, never a message nor a page position: nothing to resume from.
        for (const group of this._unplaced) {
          if (this.positions[group]) continue;
          this._emit("gap", { group, reason: "no-position", epoch: null, offset: null });
          this._emit("resume", { group, recovered: false, reason: "no-position" });
        }
      }
      this._unplaced.clear();
      this._opened = true;
      const pending = this.queue;
      this.queue = [];
      for (const data of pending) socket.send(data);
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      let data = event.data;
      if (this.optedIn && typeof data === "string" && data.startsWith(CONTROL_MARK)) {
        if (!data.startsWith(CONTROL_MARK, 1)) {
          this._control(data.slice(1));
          return;
        }
        data = data.slice(1); // an app text frame that starts with NUL, escaped by the sidecar
      }
      const next = this._next;
      if (next !== null) {
        this._next = null;
        const seen = this.positions[next.g];
        // Already had it (same stream, not past the last): never shown twice. After a gap the
        // position is the stream's top, and the messages held during the read still follow it.
        if (seen && !this._afterGap.has(next.g) && seen.epoch === next.e && next.o <= seen.offset) return;
        this._advance(next.g, next.e, next.o);
      }
      this._emit("message", data);
      if (typeof data === "string") {
        let value;
        try {
          value = JSON.parse(data);
        } catch (_) {
          return; // not JSON: "message" listeners have it
        }
        this._emit("json", value);
      }
    };
    socket.onerror = (event) => {
      if (socket !== this.socket) return;
      this._emit("error", event);
      // A browser follows "error" with "close"; Node 20 may not (a refused connect): then it counts as 1006.
      if (this._errorTimer !== null) this._env.clearTimeout(this._errorTimer);
      this._errorTimer = this._env.setTimeout(() => {
        this._errorTimer = null;
        if (socket !== this.socket) return;
        this._closed(1006, "error without close"); // detaches it first: a late "close" of it is ignored
        try {
          socket.close();
        } catch (_) {
          // closing a socket that never opened may throw: it is abandoned anyway
        }
      }, this.options.errorCloseAfter);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this._closed(event.code, event.reason || "");
    };
  }

  _advance(group, epoch, offset) {
    const pos = this.positions[group];
    if (!pos || pos.epoch !== epoch || offset > pos.offset) {
      delete this.positions[group]; // re-inserted last: the most recently updated are the ones resumed
      this.positions[group] = { epoch, offset };
      this._afterGap.delete(group);
    }
  }

  _control(text) {
    let body;
    try {
      body = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!body || typeof body !== "object" || typeof body.g !== "string") return;
    const group = body.g;
    if (body.t === "h") {
      this._next = { g: group, e: String(body.e), o: Number(body.o) };
      this._unplaced.delete(group);
    } else if (body.t === "j") {
      // Joined at position e/o (the layer's notice): every later message of the group comes to this
      // socket, so a reconnect resumes from it exactly. A position already known is kept.
      const offset = Number(body.o);
      if (this.positions[group]) {
        // kept
      } else if (typeof body.e === "string" && EPOCH_RE.test(body.e) && Number.isSafeInteger(offset) && offset >= 0) {
        this.positions[group] = { epoch: body.e, offset };
      } else {
        this._unplaced.add(group); // a layer without join positions: nothing to resume from
      }
    } else if (body.t === "recovered") {
      this._advance(group, String(body.e), Number(body.o));
      this._emit("recovered", { group, epoch: body.e, offset: body.o, count: body.n });
      this._emit("resume", { group, recovered: true, reason: null });
    } else if (body.t === "gap") {
      delete this.positions[group];
      if (typeof body.e === "string") this.positions[group] = { epoch: body.e, offset: Number(body.o) };
      this._afterGap.add(group);
      this._emit("gap", { group, reason: body.why, epoch: body.e ?? null, offset: body.o ?? null });
      const why = String(body.why);
      this._emit("resume", { group, recovered: false, reason: RESUME_REASONS[why] || why });
    } else if (body.t === "p") {
      const { t: _t, g: _g, ...change } = body;
      this._emit("presence", { group, change });
      for (const ev of Array.isArray(body.ev) ? body.ev : []) {
        if (!Array.isArray(ev)) continue;
        if (ev[0] === "j") {
          this._emit("join", { group, connId: ev[1], user: ev[2] ?? null, info: ev[3] ?? null, since: ev[4] ?? null });
        } else if (ev[0] === "l") {
          this._emit("leave", { group, connId: ev[1] });
        }
      }
      if (Number.isFinite(body.c)) {
        this._emit("count", { group, clients: body.c, users: Number.isFinite(body.u) ? body.u : null,
          mode: body.m === "c" ? "count" : "events", stale: !!body.stale });
      }
    }
  }

  _closed(code, reason) {
    this.socket = null;
    this._next = null;
    if (this._errorTimer !== null) {
      this._env.clearTimeout(this._errorTimer);
      this._errorTimer = null;
    }
    if (this._stableTimer !== null) {
      this._env.clearTimeout(this._stableTimer);
      this._stableTimer = null;
    }
    if (this.stopped) {
      this._emit("close", { code, reason, willReconnect: false, delay: null });
      return;
    }
    const retry = this.options.reconnect && shouldReconnect(code) && this.attempt < this.options.maxAttempts;
    if (!retry) {
      this._emit("close", { code, reason, willReconnect: false, delay: null });
      this._stop(code, reason);
      return;
    }
    if (this._isOffline()) {
      this._waitingForOnline = true;
      this._emit("close", { code, reason, willReconnect: true, delay: null });
      return;
    }
    const delay = backoffDelay(this.attempt, this.options.baseDelay, this.options.maxDelay, this._env.random);
    this.attempt += 1;
    this._emit("close", { code, reason, willReconnect: true, delay });
    this._emit("reconnecting", { attempt: this.attempt, delay });
    this._retryTimer = this._env.setTimeout(() => this._open(), delay);
  }

  _online() {
    if (this.stopped || !this._waitingForOnline && this._retryTimer === null) return;
    this._waitingForOnline = false;
    if (this._retryTimer !== null) this._env.clearTimeout(this._retryTimer);
    // Back online: the network was the problem, so try now rather than after the backoff.
    this._open();
  }

  _offline() {
    if (this.stopped) return;
    if (this._retryTimer !== null) {
      this._env.clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._waitingForOnline = true;
    }
    // An open socket is left alone: the browser closes it (1006) if the network really went.
  }

  _stop(code, reason) {
    if (this.stopped) return;
    this.stopped = true;
    if (this._retryTimer !== null) this._env.clearTimeout(this._retryTimer);
    if (this._stableTimer !== null) this._env.clearTimeout(this._stableTimer);
    if (this._errorTimer !== null) this._env.clearTimeout(this._errorTimer);
    this._retryTimer = this._stableTimer = this._errorTimer = null;
    const win = this._env.window;
    if (win && win.removeEventListener) {
      win.removeEventListener("online", this._onOnline);
      win.removeEventListener("offline", this._onOffline);
    }
    this._emit("stop", { code, reason });
  }
}

/**
 * Open a ChannelSocket to `path` (relative to the page, or a full ws(s):// URL), or to the URL
 * a function returns (or resolves to) before every attempt.
 */
export function connect(path, options = {}) {
  if (typeof path === "function") return new ChannelSocket(path, options);
  return new ChannelSocket(wsURL(path, options.location || globalThis.location), options);
}

export default connect;
