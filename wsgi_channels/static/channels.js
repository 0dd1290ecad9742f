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
});

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
      const pending = this.queue;
      this.queue = [];
      for (const data of pending) socket.send(data);
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      this._emit("message", event.data);
      if (typeof event.data === "string") {
        let value;
        try {
          value = JSON.parse(event.data);
        } catch (_) {
          return; // not JSON: "message" listeners have it
        }
        this._emit("json", value);
      }
    };
    socket.onerror = (event) => {
      if (socket !== this.socket) return;
      this._emit("error", event);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this._closed(event.code, event.reason || "");
    };
  }

  _closed(code, reason) {
    this.socket = null;
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
    this._retryTimer = this._stableTimer = null;
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
