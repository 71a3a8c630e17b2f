// A plain WebSocket backend written to switchyard's Socket.IO mapping (README, "Socket.IO
// clients"): the application the socket.io-protocol suite expects, with no Socket.IO in it.
// Each namespace a client joins is a WebSocket here, at the namespace's path; the CONNECT's
// auth payload arrives as the X-Socketio-Auth header.
//   - every namespace: sends ["auth", <auth or {}>] at once
//   - "/" (any path but /custom): ["message", ...args] -> ["message-back", ...args];
//     {"event":["message-with-ack", ...args],"id":N} -> {"ack":N,"args":[...args]};
//     binary attachments (announced by placeholders) follow their message both ways;
//     ["close", code] -> closes with that code
//   - "/forbidden": the handshake refused with 403
// Usage: NODE_PATH=<dir with node_modules> node backend.js PORT
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({
  port: parseInt(process.argv[2], 10),
  host: '127.0.0.1',
  // A namespace this backend does not serve: the handshake is refused.
  verifyClient: (info, done) => (info.req.url.startsWith('/forbidden') ? done(false, 403) : done(true)),
});

function placeholders(v) {
  if (Array.isArray(v)) return v.reduce((n, x) => n + placeholders(x), 0);
  if (v && typeof v === 'object') {
    if (v._placeholder === true) return 1;
    return Object.values(v).reduce((n, x) => n + placeholders(x), 0);
  }
  return 0;
}

wss.on('connection', (ws, req) => {
  const header = req.headers['x-socketio-auth'];
  ws.send(JSON.stringify(['auth', header ? JSON.parse(header) : {}]));
  if (req.url.startsWith('/custom')) return;
  let pending = null;
  const reply = (msg, parts) => {
    if (Array.isArray(msg) && msg[0] === 'message') {
      ws.send(JSON.stringify(['message-back', ...msg.slice(1)]));
    } else if (Array.isArray(msg) && msg[0] === 'close') {
      return ws.close(msg[1]);
    } else if (msg && Array.isArray(msg.event) && msg.event[0] === 'message-with-ack') {
      ws.send(JSON.stringify({ ack: msg.id, args: msg.event.slice(1) }));
    } else {
      return;
    }
    for (const p of parts) ws.send(p, { binary: true });
  };
  ws.on('message', (data, isBinary) => {
    if (pending) {
      pending.parts.push(data);
      if (--pending.left === 0) {
        reply(pending.msg, pending.parts);
        pending = null;
      }
      return;
    }
    if (isBinary) return;
    let msg;
    try { msg = JSON.parse(data.toString()); } catch (e) { return; }
    const n = placeholders(msg);
    if (n > 0) pending = { msg, left: n, parts: [] };
    else reply(msg, []);
  });
});
