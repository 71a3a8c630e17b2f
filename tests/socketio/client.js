// A real Socket.IO client through switchyard to tests/socketio/backend.js: socket.io-client 4
// (protocol 5) or 2.5 (protocol 4, installed as socket.io-client-v2). On two namespaces it
// checks the auth each backend session saw, events with non-ASCII text, a 64 KiB string and
// binary, an ack with binary, and that a deliberate backend close is a server disconnect.
// Usage: NODE_PATH=<dir with node_modules> node client.js URL 4|2 polling|websocket|upgrade
const [url, version, mode] = process.argv.slice(2);
const transports = { polling: ['polling'], websocket: ['websocket'], upgrade: ['polling', 'websocket'] }[mode];
const io = version === '4' ? require('socket.io-client').io : require('socket.io-client-v2');
const connect = (nsp, token) => {
  const opts = { path: '/socket.io', transports, upgrade: mode === 'upgrade', forceNew: true, reconnection: false };
  if (token) {
    if (version === '4') opts.auth = { token };
    else opts.query = { token };
  }
  return io(url + nsp, opts);
};
const result = { ok: false, steps: [] };
const finish = (ok, why) => {
  result.ok = ok;
  result.why = why;
  console.log(JSON.stringify(result));
  setTimeout(() => process.exit(ok ? 0 : 1), 300);
};
setTimeout(() => finish(false, 'timed out'), 15000);
const once = (socket, event) => new Promise((resolve) => socket.once(event, (...args) => resolve(args)));
const same = (a, b) => {
  if (Buffer.isBuffer(a) || a instanceof ArrayBuffer) return Buffer.from(a).equals(Buffer.from(b));
  return JSON.stringify(a) === JSON.stringify(b);
};

(async () => {
  const main = connect('/');
  const custom = connect('/custom', 'abc');
  // Both listened for at once: either may come first.
  const [[mainAuth], [customAuth]] = await Promise.all([once(main, 'auth'), once(custom, 'auth')]);
  result.steps.push('auth');
  // socket.io-client 2 joins `/` with the handshake, without auth.
  if (!same(mainAuth, {}) || !same(customAuth, { token: 'abc' })) {
    return finish(false, `auth seen: ${JSON.stringify([mainAuth, customAuth])}`);
  }
  if (mode === 'upgrade' && main.io.engine.transport.name !== 'websocket') {
    await once(main.io.engine, 'upgrade');
  }
  const args = ['h\u00e9llo \u2603 \ud83d\ude00', 'x'.repeat(64 * 1024), Buffer.from([0, 1, 2, 255]), { n: [1, true, null] }];
  main.emit('message', ...args);
  const back = await once(main, 'message-back');
  if (back.length !== args.length || !args.every((a, i) => same(a, back[i]))) {
    return finish(false, 'message-back differs');
  }
  result.steps.push('event');
  const acked = await new Promise((resolve) => main.emit('message-with-ack', 1, 'two', Buffer.from([9, 8]), (...r) => resolve(r)));
  if (!same(acked[0], 1) || !same(acked[1], 'two') || !same(acked[2], Buffer.from([9, 8]))) {
    return finish(false, `ack: ${JSON.stringify(acked)}`);
  }
  result.steps.push('ack');
  result.transport = main.io.engine.transport.name;
  // The backend closes `/` with 4000: a server disconnect, `/custom` stays.
  main.emit('close', 4000);
  const [reason] = await once(main, 'disconnect');
  result.reason = reason;
  if (reason !== 'io server disconnect') return finish(false, `disconnect: ${reason}`);
  if (!custom.connected) return finish(false, '/custom went with /');
  result.steps.push('disconnect');
  custom.close();
  finish(true, null);
})().catch((e) => finish(false, String(e)));
