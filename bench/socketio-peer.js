// The peer for bench/compare.sh's Socket.IO rows: the npm `socket.io` 4 server (one process,
// pinned to one core by the caller), fed the same messages as switchyard: it subscribes to the
// benchmark backend's feed as a WebSocket client and emits each message to every client on
// `/` as the event `message` (one broadcast: socket.io encodes it once for all).
// Usage: NODE_PATH=<dir with node_modules> node socketio-peer.js PORT FEED_URL
const http = require('http');
const { Server } = require('socket.io');
const WebSocket = require('ws');

const [port, feed] = [parseInt(process.argv[2], 10), process.argv[3]];
const server = http.createServer();
// Heartbeats as switchyard's bench route has them (60 s), so that idle clients stay idle.
const io = new Server(server, { pingInterval: 60000, pingTimeout: 60000, maxHttpBufferSize: 1e6 });
server.listen(port, '127.0.0.1');

const connect = () => {
  const ws = new WebSocket(feed);
  ws.on('message', (data, binary) => io.emit('message', binary ? data : data.toString()));
  ws.on('close', () => setTimeout(connect, 200));
  ws.on('error', () => {});
};
connect();
