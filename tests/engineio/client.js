// A real Engine.IO client echoing through switchyard: engine.io-client 6 (protocol 4) or 3.5
// (protocol 3, installed as engine.io-client-v3). It sends non-ASCII text, a 64 KiB text and a
// binary message, expects each back unchanged and in order, and prints what it saw as JSON.
// Usage: NODE_PATH=<dir with node_modules> node client.js URL 6|3 polling|websocket|upgrade
const [url, version, mode] = process.argv.slice(2);
const transports = { polling: ['polling'], websocket: ['websocket'], upgrade: ['polling', 'websocket'] }[mode];
const opts = { path: '/engine.io/', transports, upgrade: mode === 'upgrade' };
let socket;
if (version === '6') {
  const { Socket } = require('engine.io-client');
  socket = new Socket(url, opts);
} else {
  socket = require('engine.io-client-v3')(url, opts);
}
const sent = ['h\u00e9llo \u2603 \ud83d\ude00 \u2028', 'x'.repeat(64 * 1024), Buffer.from([0, 1, 2, 253, 254, 255])];
const got = [];
let sentAfter = null;
const done = (ok, why) => {
  console.log(JSON.stringify({ ok, why, transport: socket.transport && socket.transport.name, sentAfter, received: got.length }));
  socket.close();
  // A polling client's close is a POST of its own: given the time to go out.
  setTimeout(() => process.exit(ok ? 0 : 1), 300);
};
setTimeout(() => done(false, 'timed out'), 10000);
const send = (on) => {
  sentAfter = on;
  for (const m of sent) socket.send(m);
};
socket.on('open', () => {
  if (mode !== 'upgrade') send(socket.transport.name);
});
socket.on('upgrade', (t) => send('upgrade to ' + (t.name || t)));
socket.on('error', (e) => done(false, 'error: ' + e));
socket.on('message', (m) => {
  got.push(m);
  if (got.length < sent.length) return;
  for (let i = 0; i < sent.length; i++) {
    const want = sent[i];
    const have = got[i];
    const same = typeof want === 'string' ? have === want : Buffer.isBuffer(have) || have instanceof ArrayBuffer ? Buffer.from(have).equals(want) : false;
    if (!same) return done(false, `message ${i} came back as ${typeof have}: ${String(have).slice(0, 40)}`);
  }
  done(true, null);
});
