// A plain WebSocket echo backend (npm `ws`): what the protocol suites' echo server does, as a
// backend that knows nothing of Engine.IO. Usage: NODE_PATH=<dir with node_modules> node echo-backend.js PORT
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ port: parseInt(process.argv[2], 10), host: '127.0.0.1', maxPayload: 16 << 20 });
wss.on('connection', (ws) => ws.on('message', (m, isBinary) => ws.send(m, { binary: isBinary })));
