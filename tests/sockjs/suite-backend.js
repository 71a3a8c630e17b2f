// The plain WebSocket backend behind the sockjs-protocol suite's routes (npm `ws`): `/echo`
// echoes each message, `/close` closes at once with 3000 "Go away!", as the suite's reference
// server does. Usage: NODE_PATH=<dir with node_modules> node suite-backend.js PORT
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ port: parseInt(process.argv[2], 10), host: '127.0.0.1', maxPayload: 16 << 20 });
wss.on('connection', (ws, req) => {
  if (req.url.startsWith('/close')) {
    ws.close(3000, 'Go away!');
    return;
  }
  ws.on('message', (m, isBinary) => ws.send(m, { binary: isBinary }));
});
