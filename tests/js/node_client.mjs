// The shipped client (channels.js) in Node 20+, against a real sidecar: driven by
// tests/test_client_node.py, which kills and restarts the sidecar and publishes meanwhile.
//
//   node --experimental-websocket tests/js/node_client.mjs ws://127.0.0.1:PORT/ws/GROUP '{"GROUP": {"epoch": "..", "offset": 3}}'
//
// Node 22 has a global WebSocket; Node 20 needs --experimental-websocket. Every event of the
// client is printed as one JSON line on stdout; the script ends when stdin closes.
import { connect } from "../../wsgi_channels/static/channels.js";

const [url, positions] = process.argv.slice(2);
if (typeof WebSocket === "undefined") {
  console.error("no global WebSocket: run Node 22, or Node 20 with --experimental-websocket");
  process.exit(2);
}
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const socket = connect(url, { baseDelay: 100, maxDelay: 400, positions: positions ? JSON.parse(positions) : null });
socket.on("open", () => print({ ev: "open" }));
socket.on("message", (data) => print({ ev: "message", data }));
socket.on("resume", (detail) => print({ ev: "resume", ...detail }));
socket.on("close", ({ code, willReconnect }) => print({ ev: "close", code, willReconnect }));
socket.on("error", () => print({ ev: "error" }));
socket.on("reconnecting", ({ attempt }) => print({ ev: "reconnecting", attempt }));
socket.on("stop", ({ code, reason }) => print({ ev: "stop", code, reason }));
process.stdin.resume();
process.stdin.on("end", () => {
  print({ ev: "position", position: socket.position(new URL(url).pathname.split("/").pop()) });
  socket.close();
  setTimeout(() => process.exit(0), 50);
});
