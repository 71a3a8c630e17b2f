// The reference SockJS server (the npm package `sockjs`, sockjs-node) with the four services
// the SockJS protocol suite expects, for tests that compare switchyard's answers with it.
// Usage: NODE_PATH=<dir with node_modules/sockjs> node reference.js PORT
var http = require('http');
var sockjs = require('sockjs');

var opts = {
  sockjs_url: '/sockjs.min.js',
  heartbeat_delay: 25000,
  disconnect_delay: 5000,
  log: function () {}
};

var echo = sockjs.createServer(opts);
echo.on('connection', function (conn) {
  conn.on('data', function (m) { conn.write(m); });
});

var close = sockjs.createServer(opts);
close.on('connection', function (conn) { conn.close(3000, 'Go away!'); });

var server = http.createServer(function (req, res) {
  res.writeHead(404);
  res.end();
});
echo.installHandlers(server, { prefix: '/echo', response_limit: 4096 });
echo.installHandlers(server, { prefix: '/disabled_websocket_echo', websocket: false });
echo.installHandlers(server, { prefix: '/cookie_needed_echo', jsessionid: true });
close.installHandlers(server, { prefix: '/close' });
server.listen(parseInt(process.argv[2], 10), '127.0.0.1');
