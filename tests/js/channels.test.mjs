// Unit tests of wsgi_channels/static/channels.js, run by `node --test` (tests/test_client_js.py runs them).
// A fake WebSocket and fake timers stand in for the browser; the end-to-end behaviour is
// tested in a real Chromium by tests/test_browser.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ChannelSocket, STOP_CODES, backoffDelay, connect, resumeURL, shouldReconnect, wsURL,
} from "../../wsgi_channels/static/channels.js";

class FakeSocket {
  static instances = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.instances.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }
  close(code, reason) {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }
  // test helpers: the server side
  serverOpen() { this.readyState = 1; this.onopen && this.onopen({}); }
  serverMessage(data) { this.onmessage && this.onmessage({ data }); }
  serverClose(code, reason = "") { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
}

function fakeClock() {
  let now = 0;
  let next = 1;
  const timers = new Map();
  return {
    setTimeout(fn, ms) { const id = next++; timers.set(id, { fn, at: now + ms }); return id; },
    clearTimeout(id) { timers.delete(id); },
    now: () => now,
    pending: () => [...timers.values()].map((t) => t.at - now),
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = until;
    },
  };
}

function fakeWindow() {
  const target = new EventTarget();
  return { addEventListener: target.addEventListener.bind(target), removeEventListener: target.removeEventListener.bind(target), fire: (t) => target.dispatchEvent(new Event(t)) };
}

function make(options = {}) {
  FakeSocket.instances = [];
  const clock = fakeClock();
  const win = fakeWindow();
  const nav = { onLine: true };
  const sock = new ChannelSocket("ws://example.test/ws/", {
    WebSocket: FakeSocket, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: clock.now,
    window: win, navigator: nav, random: () => 0.5, ...options,
  });
  const events = [];
  for (const type of ["open", "message", "json", "close", "reconnecting", "stop", "drop", "error"]) {
    sock.addEventListener(type, (e) => events.push([type, e.detail]));
  }
  const last = () => FakeSocket.instances[FakeSocket.instances.length - 1];
  return { sock, clock, win, nav, events, last };
}

test("wsURL maps page origins to ws/wss and leaves ws URLs alone", () => {
  assert.equal(wsURL("/ws/chat/", { href: "http://example.com/page" }), "ws://example.com/ws/chat/");
  assert.equal(wsURL("/ws/chat/?a=1", { href: "https://example.com:8443/x/y" }), "wss://example.com:8443/ws/chat/?a=1");
  assert.equal(wsURL("ws/", { href: "http://h/app/page" }), "ws://h/app/ws/");
  assert.equal(wsURL("wss://other/ws/"), "wss://other/ws/");
  assert.equal(wsURL("https://other/ws/"), "wss://other/ws/");
  assert.throws(() => wsURL("/ws/", undefined), /needs a page location/);
});

test("backoff is full jitter under an exponential ceiling capped at maxDelay", () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 499);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
  assert.equal(backoffDelay(20, 500, 30000, () => 0.5), 15000);
  assert.equal(backoffDelay(1000, 500, 30000, () => 0.999999), 29999);
  assert.equal(backoffDelay(5, 500, 30000, () => 0), 0);
  // With Math.random, every delay stays under its ceiling.
  for (let a = 0; a < 12; a++) {
    const d = backoffDelay(a, 100, 5000);
    assert.ok(d >= 0 && d < Math.min(5000, 100 * 2 ** a), `attempt ${a}: ${d}`);
  }
});

test("close-code contract: stop codes and app ranges", () => {
  for (const code of STOP_CODES) assert.equal(shouldReconnect(code), false, String(code));
  for (const code of [1008, 1009, 4000, 4003, 4499]) assert.equal(shouldReconnect(code), false, String(code));
  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 1014, 4500, 4999]) assert.equal(shouldReconnect(code), true, String(code));
});

test("queues sends while connecting and flushes them in order on open", () => {
  const { sock, last, events } = make();
  assert.equal(sock.connected, false);
  assert.equal(sock.send("a"), false);
  sock.sendJSON({ b: 1 });
  last().serverOpen();
  assert.deepEqual(last().sent, ["a", '{"b":1}']);
  assert.equal(sock.send("c"), true);
  assert.deepEqual(last().sent, ["a", '{"b":1}', "c"]);
  assert.equal(events[0][0], "open");
});

test("the send queue is bounded: the oldest message is dropped with a drop event", () => {
  const { sock, last, events } = make({ maxQueue: 2 });
  sock.send("1");
  sock.send("2");
  sock.send("3");
  assert.deepEqual(events.filter((e) => e[0] === "drop"), [["drop", "1"]]);
  last().serverOpen();
  assert.deepEqual(last().sent, ["2", "3"]);
});

test("JSON text frames fire json; other frames only message", () => {
  const { last, events } = make();
  last().serverOpen();
  last().serverMessage('{"text": "hi"}');
  last().serverMessage("not json");
  const buf = new ArrayBuffer(2);
  last().serverMessage(buf);
  assert.deepEqual(events.filter((e) => e[0] === "json"), [["json", { text: "hi" }]]);
  assert.equal(events.filter((e) => e[0] === "message").length, 3);
});

test("reconnects with growing full-jitter delays, and the count resets only after a stable connection", () => {
  const { sock, clock, last, events } = make({ baseDelay: 100, maxDelay: 1000, stableAfter: 5000 });
  last().serverClose(1006);
  assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 1, delay: 50 }]); // 0.5 * 100
  clock.advance(49);
  assert.equal(FakeSocket.instances.length, 1);
  clock.advance(1);
  assert.equal(FakeSocket.instances.length, 2);
  last().serverClose(1006);
  assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 2, delay: 100 }]);
  clock.advance(100);
  // Opens but drops before stableAfter: the attempt count keeps growing.
  last().serverOpen();
  clock.advance(1000);
  last().serverClose(1001);
  assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 3, delay: 200 }]);
  clock.advance(200);
  for (let i = 0; i < 6; i++) {
    last().serverClose(1006);
    clock.advance(1000);
  }
  assert.equal(events.filter((e) => e[0] === "reconnecting").at(-1)[1].delay, 500); // capped at maxDelay/2
  // Stays up past stableAfter: the next drop starts from attempt 0 again.
  last().serverOpen();
  clock.advance(5000);
  assert.equal(sock.attempt, 0);
  last().serverClose(1012);
  assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 1, delay: 50 }]);
});

test("stop codes end the connection: no reconnect, a stop event, and send() then throws", () => {
  for (const code of [1000, 1008, 1009, 4003]) {
    const { sock, clock, last, events } = make();
    last().serverOpen();
    last().serverClose(code, "refused");
    clock.advance(60000);
    assert.equal(FakeSocket.instances.length, 1, `code ${code} must not reconnect`);
    assert.deepEqual(events.at(-1), ["stop", { code, reason: "refused" }]);
    assert.equal(sock.stopped, true);
    assert.throws(() => sock.send("x"), /after the connection stopped/);
  }
});

test("close() by the page stops for good", () => {
  const { sock, clock, last, events } = make();
  last().serverOpen();
  const s = last();
  sock.close();
  assert.deepEqual(s.closedWith, [1000, ""]);
  s.serverClose(1000);
  clock.advance(60000);
  assert.equal(FakeSocket.instances.length, 1);
  assert.ok(events.some((e) => e[0] === "stop"));
});

test("maxAttempts gives up after that many failures in a row", () => {
  const { clock, last, events } = make({ maxAttempts: 2, baseDelay: 10 });
  last().serverClose(1006);
  clock.advance(10);
  last().serverClose(1006);
  clock.advance(20);
  last().serverClose(1006);
  clock.advance(1000);
  assert.equal(FakeSocket.instances.length, 3);
  assert.equal(events.at(-1)[0], "stop");
});

test("offline pauses retries; online retries at once", () => {
  const { clock, win, nav, last } = make({ baseDelay: 10000 });
  last().serverClose(1006);
  nav.onLine = false;
  win.fire("offline");
  clock.advance(60000);
  assert.equal(FakeSocket.instances.length, 1, "no attempt while offline");
  nav.onLine = true;
  win.fire("online");
  assert.equal(FakeSocket.instances.length, 2, "online reconnects immediately");
  last().serverOpen();
  win.fire("online"); // already connected: nothing happens
  assert.equal(FakeSocket.instances.length, 2);
});

test("starting offline waits for the online event", () => {
  FakeSocket.instances = [];
  const win = fakeWindow();
  const nav = { onLine: false };
  const clock = fakeClock();
  new ChannelSocket("ws://x/", { WebSocket: FakeSocket, window: win, navigator: nav, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout });
  assert.equal(FakeSocket.instances.length, 0);
  nav.onLine = true;
  win.fire("online");
  assert.equal(FakeSocket.instances.length, 1);
});

test("a late close of a replaced socket is ignored", () => {
  const { last, clock, events } = make({ baseDelay: 10 });
  const first = last();
  first.serverClose(1006);
  clock.advance(10);
  const second = last();
  second.serverOpen();
  first.serverClose(1006); // stale handler already detached from state
  assert.equal(events.filter((e) => e[0] === "reconnecting").length, 1);
  assert.equal(second.readyState, 1);
});

test("on() passes the detail and returns an unsubscribe function", () => {
  const { sock, last } = make();
  const got = [];
  const off = sock.on("json", (v) => got.push(v));
  last().serverOpen();
  last().serverMessage("[1]");
  off();
  last().serverMessage("[2]");
  assert.deepEqual(got, [[1]]);
});

test("connect() resolves the path against the given location and passes subprotocols", () => {
  FakeSocket.instances = [];
  const s = connect("/ws/x", { location: { href: "https://site.test/p" }, WebSocket: FakeSocket, protocols: ["v1"], window: null, navigator: null });
  assert.equal(s.url, "wss://site.test/ws/x");
  assert.deepEqual(FakeSocket.instances[0].protocols, ["v1"]);
  s.close();
});

test("a constructor error (bad URL) stops instead of retrying", () => {
  class Throwing { constructor() { throw new SyntaxError("bad url"); } }
  const events = [];
  const s = new ChannelSocket("nonsense", { WebSocket: Throwing, window: null, navigator: null });
  assert.equal(s.stopped, true);
});

test("a URL function is asked before every attempt (a fresh signed URL after a token expired)", async () => {
  FakeSocket.instances = [];
  const clock = fakeClock();
  let n = 0;
  const s = connect(() => `/ws/x?_wsc_token=t${++n}`, {
    location: { href: "http://app.test:8000/page" }, WebSocket: FakeSocket, setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout, now: clock.now, window: null, navigator: null, random: () => 0.5,
  });
  assert.equal(FakeSocket.instances[0].url, "ws://app.test:8000/ws/x?_wsc_token=t1&_wsc=1");
  FakeSocket.instances[0].serverClose(1006);
  clock.advance(1000);
  assert.equal(FakeSocket.instances[1].url, "ws://app.test:8000/ws/x?_wsc_token=t2&_wsc=1");
  assert.equal(s.url, "ws://app.test:8000/ws/x?_wsc_token=t2");
  s.close();
});

test("a URL function may return a Promise; a rejected one is a failed attempt, retried with backoff", async () => {
  FakeSocket.instances = [];
  const clock = fakeClock();
  let calls = 0;
  const events = [];
  const s = connect(() => (++calls === 1 ? Promise.reject(new Error("app down"))
    : Promise.resolve("ws://rt.test/ws/y?_wsc_token=ok")), {
    WebSocket: FakeSocket, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: clock.now,
    window: null, navigator: null, random: () => 0.5,
  });
  s.on("reconnecting", (d) => events.push(["reconnecting", d.attempt]));
  s.on("open", (d) => events.push(["open", d.url]));
  await new Promise((r) => setImmediate(r));
  assert.equal(FakeSocket.instances.length, 0);
  assert.deepEqual(events, [["reconnecting", 1]]);
  clock.advance(1000);
  await new Promise((r) => setImmediate(r));
  assert.equal(FakeSocket.instances.length, 1);
  FakeSocket.instances[0].serverOpen();
  assert.deepEqual(events.at(-1), ["open", "ws://rt.test/ws/y?_wsc_token=ok"]);
  assert.equal(FakeSocket.instances[0].url, "ws://rt.test/ws/y?_wsc_token=ok&_wsc=1");
  s.close();
});

// -- resume after reconnect and presence (the sidecar's control frames) --------------------------

function makeResume(options = {}) {
  const made = make(options);
  for (const type of ["recovered", "gap", "presence", "resume", "join", "leave", "count"]) {
    made.sock.addEventListener(type, (e) => made.events.push([type, e.detail]));
  }
  return made;
}

const ctl = (body) => "\u0000" + JSON.stringify(body);

test("resume: false opts out: the URL and the frames are a raw socket's (a NUL text frame is a message)", () => {
  const { events, last } = make({ resume: false });
  assert.equal(last().url, "ws://example.test/ws/");
  last().serverOpen();
  last().serverMessage("\u0000x");
  assert.deepEqual(events.filter(([t]) => t === "message"), [["message", "\u0000x"]]);
});

test("the client always opts in, tracks positions from control frames, and sends them on reconnect", () => {
  const { sock, events, last, clock } = makeResume();
  assert.equal(last().url, "ws://example.test/ws/?_wsc=1");
  last().serverOpen();
  last().serverMessage(ctl({ t: "h", g: "chat.a", e: "Ep1", o: 7 }));
  last().serverMessage('{"n":7}');
  last().serverMessage(ctl({ t: "h", g: "chat.a", e: "Ep1", o: 8 }));
  last().serverMessage(new ArrayBuffer(2));
  last().serverMessage("\u0000\u0000app"); // an app frame starting with NUL, escaped
  assert.deepEqual(sock.position("chat.a"), { epoch: "Ep1", offset: 8 });
  const messages = events.filter(([t]) => t === "message").map(([, d]) => d);
  assert.equal(messages.length, 3);
  assert.equal(messages[0], '{"n":7}');
  assert.equal(messages[2], "\u0000app");
  assert.deepEqual(events.filter(([t]) => t === "json").map(([, d]) => d), [{ n: 7 }]);
  last().serverClose(1006);
  clock.advance(60000);
  assert.equal(last().url, "ws://example.test/ws/?_wsc=1&_wsc_r=chat.a:Ep1:8");
});

test("initial positions from the page resume the first connect; recovered and gap events", () => {
  const { sock, events, last } = makeResume({ positions: { "chat.a": { epoch: "E", offset: 3 } } });
  assert.equal(last().url, "ws://example.test/ws/?_wsc=1&_wsc_r=chat.a:E:3");
  last().serverOpen();
  last().serverMessage(ctl({ t: "h", g: "chat.a", e: "E", o: 4 }));
  last().serverMessage("m4");
  last().serverMessage(ctl({ t: "recovered", g: "chat.a", e: "E", o: 4, n: 1 }));
  last().serverMessage(ctl({ t: "gap", g: "chat.b", why: "epoch", e: "F", o: 9 }));
  last().serverMessage(ctl({ t: "gap", g: "chat.c", why: "unavailable" }));
  assert.deepEqual(events.filter(([t]) => ["recovered", "gap"].includes(t)), [
    ["recovered", { group: "chat.a", epoch: "E", offset: 4, count: 1 }],
    ["gap", { group: "chat.b", reason: "epoch", epoch: "F", offset: 9 }],
    ["gap", { group: "chat.c", reason: "unavailable", epoch: null, offset: null }],
  ]);
  assert.deepEqual(sock.position("chat.b"), { epoch: "F", offset: 9 });
  assert.equal(sock.position("chat.c"), null);
  assert.equal(events.filter(([t]) => t === "message").length, 1);
});

test("presence frames become presence events", () => {
  const { events, last } = makeResume();
  last().serverOpen();
  last().serverMessage(ctl({ t: "p", g: "room.a", v: 2, c: 1, u: 1, m: "e", ev: [["l", "abc"]] }));
  assert.deepEqual(events.filter(([t]) => t === "presence"), [
    ["presence", { group: "room.a", change: { v: 2, c: 1, u: 1, m: "e", ev: [["l", "abc"]] } }],
  ]);
});

test("resumeURL keeps other parameters and the connect token, replaces old _wsc ones, skips bad positions", () => {
  assert.equal(resumeURL("ws://h/ws/?_wsc_token=T&x=1&_wsc=1&_wsc_r=a:b:1", { g: { epoch: "E", offset: 2 } }),
    "ws://h/ws/?_wsc_token=T&x=1&_wsc=1&_wsc_r=g:E:2");
  assert.equal(resumeURL("ws://h/ws/", { "bad name": { epoch: "E", offset: 1 }, g: { epoch: "E!", offset: 1 },
    h: { epoch: "E", offset: -1 } }), "ws://h/ws/?_wsc=1");
});

test("a history group joined without any position is reported as a gap (no-position) after a reconnect", () => {
  const { events, last, clock } = makeResume();
  last().serverOpen();
  last().serverMessage(ctl({ t: "j", g: "chat.quiet" }));
  last().serverMessage(ctl({ t: "j", g: "chat.busy" }));
  last().serverMessage(ctl({ t: "h", g: "chat.busy", e: "E", o: 1 }));
  last().serverMessage("m1");
  last().serverClose(1001);
  clock.advance(60000);
  assert.equal(last().url, "ws://example.test/ws/?_wsc=1&_wsc_r=chat.busy:E:1");
  last().serverOpen();
  assert.deepEqual(events.filter(([t]) => t === "gap"), [
    ["gap", { group: "chat.quiet", reason: "no-position", epoch: null, offset: null }],
  ]);
});

test("a history group joined at a position (the j frame's e/o) is resumed from it after a reconnect", () => {
  const { sock, events, last, clock } = makeResume({ positions: { "chat.known": { epoch: "K", offset: 7 } } });
  last().serverOpen();
  last().serverMessage(ctl({ t: "j", g: "chat.quiet", e: "Ep0ch_-1", o: 12 }));
  last().serverMessage(ctl({ t: "j", g: "chat.known", e: "K", o: 9 })); // a known position is kept
  last().serverMessage(ctl({ t: "j", g: "chat.bad", e: "no good", o: 3 })); // not a position: none
  assert.deepEqual(sock.position("chat.quiet"), { epoch: "Ep0ch_-1", offset: 12 });
  assert.deepEqual(sock.position("chat.known"), { epoch: "K", offset: 7 });
  assert.equal(sock.position("chat.bad"), null);
  last().serverMessage(ctl({ t: "h", g: "chat.quiet", e: "Ep0ch_-1", o: 12 })); // at the join: not shown
  last().serverMessage("old");
  last().serverMessage(ctl({ t: "h", g: "chat.quiet", e: "Ep0ch_-1", o: 13 }));
  last().serverMessage("new");
  assert.deepEqual(events.filter(([t]) => t === "message").map(([, d]) => d), ["new"]);
  last().serverClose(1006);
  clock.advance(60000);
  assert.equal(last().url, "ws://example.test/ws/?_wsc=1&_wsc_r=chat.known:K:7,chat.quiet:Ep0ch_-1:13");
  last().serverOpen();
  assert.deepEqual(events.filter(([t]) => t === "resume").map(([, d]) => d),
    [{ group: "chat.bad", recovered: false, reason: "no-position" }]);
});

test("presence(group) reads the app's presence view and rejects naming the HTTP status", async () => {
  const asked = [];
  const fetch = async (url, init) => {
    asked.push([url, init.credentials]);
    if (url.endsWith("/room.closed")) return { ok: false, status: 404 };
    return { ok: true, status: 200, json: async () => ({ group: "room.a", clients: 1, users: 1, members: [] }) };
  };
  const { sock } = make({ fetch });
  assert.deepEqual(await sock.presence("room.a"), { group: "room.a", clients: 1, users: 1, members: [] });
  await assert.rejects(sock.presence("room.closed"), /HTTP 404/);
  assert.deepEqual(asked, [["/_wsgi_channels/presence/room.a", "same-origin"], ["/_wsgi_channels/presence/room.closed", "same-origin"]]);
});

test("at most 32 groups are resumed: the most recently updated", () => {
  const positions = {};
  for (let i = 0; i < 40; i += 1) positions[`g${i}`] = { epoch: "E", offset: i };
  const url = resumeURL("ws://h/ws/", positions);
  const items = url.split("_wsc_r=")[1].split(",");
  assert.equal(items.length, 32);
  assert.equal(items[0], "g8:E:8");
  const { sock, last, clock } = makeResume({ positions });
  last().serverOpen();
  last().serverMessage(ctl({ t: "h", g: "g0", e: "E", o: 100 }));
  last().serverMessage("x");
  last().serverClose(1006);
  clock.advance(60000);
  assert.ok(last().url.endsWith(",g0:E:100"), last().url);
  assert.ok(!last().url.includes("g8:E:8,") && last().url.includes("=g9:E:9,"), last().url);
  assert.equal(sock.position("g0").offset, 100);
});

test("resume events: recovered true, or false with the reason mapped from the sidecar's why", () => {
  const { events, last, clock } = makeResume({ positions: { "chat.a": { epoch: "E", offset: 3 } } });
  last().serverOpen();
  last().serverMessage(ctl({ t: "recovered", g: "chat.a", e: "E", o: 3, n: 0 }));
  const whys = ["epoch", "trimmed", "too_many", "unavailable", "timeout", "not-joined", "skipped"];
  for (const why of whys) last().serverMessage(ctl({ t: "gap", g: `g.${why}`, why, e: "F", o: 1 }));
  last().serverMessage(ctl({ t: "j", g: "chat.quiet" }));
  last().serverClose(1006);
  clock.advance(60000);
  last().serverOpen();
  assert.deepEqual(events.filter(([t]) => t === "resume").map(([, d]) => d), [
    { group: "chat.a", recovered: true, reason: null },
    { group: "g.epoch", recovered: false, reason: "epoch" },
    { group: "g.trimmed", recovered: false, reason: "gap" },
    { group: "g.too_many", recovered: false, reason: "too_many" },
    { group: "g.unavailable", recovered: false, reason: "unavailable" },
    { group: "g.timeout", recovered: false, reason: "timeout" },
    { group: "g.not-joined", recovered: false, reason: "not-joined" },
    { group: "g.skipped", recovered: false, reason: "skipped" },
    { group: "chat.quiet", recovered: false, reason: "no-position" },
  ]);
  // The lower-level gap event keeps the sidecar's word.
  assert.deepEqual(events.filter(([t]) => t === "gap")[1], ["gap", { group: "g.trimmed", reason: "trimmed", epoch: "F", offset: 1 }]);
});

test("a message at or below the last position of its stream is never shown twice; after a gap the held ones are", () => {
  const { events, last } = makeResume({ positions: { "chat.a": { epoch: "E", offset: 5 } } });
  last().serverOpen();
  for (const o of [5, 6, 6, 7]) {
    last().serverMessage(ctl({ t: "h", g: "chat.a", e: "E", o }));
    last().serverMessage(`m${o}`);
  }
  last().serverMessage(ctl({ t: "h", g: "chat.a", e: "New", o: 1 })); // a new stream starts again at 1
  last().serverMessage("n1");
  // A gap: the position becomes the stream's top (9), and the messages held during the read follow.
  last().serverMessage(ctl({ t: "gap", g: "chat.a", why: "trimmed", e: "New", o: 9 }));
  for (const o of [8, 9, 10]) {
    last().serverMessage(ctl({ t: "h", g: "chat.a", e: "New", o }));
    last().serverMessage(`n${o}`);
  }
  last().serverMessage(ctl({ t: "h", g: "chat.a", e: "New", o: 10 }));
  last().serverMessage("n10 again");
  assert.deepEqual(events.filter(([t]) => t === "message").map(([, d]) => d), ["m6", "m7", "n1", "n8", "n9", "n10"]);
});

test("presence frames become join, leave and count events (count mode: count only)", () => {
  const { events, last } = makeResume();
  last().serverOpen();
  last().serverMessage(ctl({ t: "p", g: "room.a", v: 3, c: 2, u: 1, m: "e",
    ev: [["j", "c1", "ann", { color: "red" }, 1700000000000], ["j", "c2", "ann", null, 1700000000500], ["l", "c0"]] }));
  last().serverMessage(ctl({ t: "p", g: "room.a", v: 9, c: 1500, u: 900, m: "c", ev: [] }));
  last().serverMessage(ctl({ t: "p", g: "room.a", v: 12, c: 100, u: 80, m: "e", ev: [], stale: true }));
  const got = events.filter(([t]) => ["join", "leave", "count"].includes(t));
  assert.deepEqual(got, [
    ["join", { group: "room.a", connId: "c1", user: "ann", info: { color: "red" }, since: 1700000000000 }],
    ["join", { group: "room.a", connId: "c2", user: "ann", info: null, since: 1700000000500 }],
    ["leave", { group: "room.a", connId: "c0" }],
    ["count", { group: "room.a", clients: 2, users: 1, mode: "events", stale: false }],
    ["count", { group: "room.a", clients: 1500, users: 900, mode: "count", stale: false }],
    ["count", { group: "room.a", clients: 100, users: 80, mode: "events", stale: true }],
  ]);
  assert.equal(events.filter(([t]) => t === "presence").length, 3);
  assert.equal(events.filter(([t]) => t === "message").length, 0);
});

test("an error with no close after it (Node 20's refused connect) counts as close 1006 and is retried", () => {
  const { clock, last, events } = make({ baseDelay: 100, errorCloseAfter: 1000 });
  const first = last();
  first.onerror({ type: "error" }); // readyState stays CONNECTING, no close ever comes
  clock.advance(999);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(events.filter(([t]) => t === "close").length, 0);
  clock.advance(1);
  assert.deepEqual(events.filter(([t]) => t === "close").map(([, d]) => [d.code, d.willReconnect]), [[1006, true]]);
  assert.deepEqual(first.closedWith, [undefined, undefined]);
  clock.advance(100);
  assert.equal(FakeSocket.instances.length, 2, "a second attempt");
  first.serverClose(1006); // a late close of the abandoned socket changes nothing
  assert.equal(events.filter(([t]) => t === "reconnecting").length, 1);
  // A browser: error then close at once: one close, one retry, the timer is cancelled.
  last().onerror({ type: "error" });
  last().serverClose(1006);
  clock.advance(5000);
  assert.equal(events.filter(([t]) => t === "close").length, 2);
  assert.equal(events.filter(([t]) => t === "reconnecting").length, 2);
  assert.equal(FakeSocket.instances.length, 3);
});
