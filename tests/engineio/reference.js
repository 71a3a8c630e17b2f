// The reference Engine.IO server (the npm package `engine.io` 6, with `allowEIO3` so that it
// serves revision 3 too) echoing every message, for tests that compare switchyard's answers
// with it. Usage: NODE_PATH=<dir with node_modules> node reference.js PORT PING_INTERVAL PING_TIMEOUT
const http = require('http');
const engine = require('engine.io');

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const eio = engine.attach(server, {
  path: '/engine.io/',
  allowEIO3: true,
  pingInterval: parseInt(process.argv[3] || '25000', 10),
  pingTimeout: parseInt(process.argv[4] || '20000', 10),
  maxHttpBufferSize: 1e6,
});
eio.on('connection', (socket) => {
  socket.on('message', (m) => socket.send(m));
});
server.listen(parseInt(process.argv[2], 10), '127.0.0.1');
