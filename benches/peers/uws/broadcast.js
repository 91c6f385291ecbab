// The uWebSockets.js peer of `surge-bench fanout`, with uWS's own pub/sub: connections to /sub
// subscribe to one topic; each binary message received on /pub is published to it with
// app.publish (uWS frames it once and shares it). One thread (uWS pub/sub is per App, per thread).
// `node broadcast.js --port P [--workers N]` prints `listening on 0.0.0.0:P`.
'use strict';
const { args, load } = require('./common');

const uWS = load();
const { port } = args();
const TOPIC = 'all';

const common = {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 1024 * 1024, // surge's default max_backpressure (beyond it both drop)
  idleTimeout: 0,
};

const app = uWS.App();
app.ws('/sub', {
  ...common,
  open: (ws) => {
    ws.subscribe(TOPIC);
  },
}).ws('/pub', {
  ...common,
  message: (ws, message, isBinary) => {
    if (isBinary) app.publish(TOPIC, message, true);
  },
}).listen('0.0.0.0', port, (socket) => {
  if (!socket) {
    console.error(`uws broadcast: cannot listen on 0.0.0.0:${port}`);
    process.exit(1);
  }
  console.log(`listening on 0.0.0.0:${port}`);
});
