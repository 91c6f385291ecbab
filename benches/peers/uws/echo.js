// The uWebSockets.js peer of `surge-bench echo`/`compare`: echoes every message as received (binary
// stays binary). One thread: compare it with surge at --server-workers 1.
// `node echo.js --port P [--workers N]` prints `listening on 127.0.0.1:P`.
'use strict';
const { args, load } = require('./common');

const uWS = load();
const { port } = args();

uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 1024 * 1024, // surge's default max_backpressure
  idleTimeout: 0,
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary);
  },
}).listen('127.0.0.1', port, (socket) => {
  if (!socket) {
    console.error(`uws echo: cannot listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`listening on 127.0.0.1:${port}`);
});
