// Shared by the uWebSockets.js peers of surge-bench: argument parsing and loading the module from
// where setup.sh installed it (target/uws-peer/ at the repository root, or $SURGE_UWS_DIR).
'use strict';
const path = require('path');

function args() {
  const out = { port: 9001, workers: 1 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag}: missing value`);
    if (flag === '--port') out.port = parseInt(value, 10);
    else if (flag === '--workers') out.workers = parseInt(value, 10);
    else if (flag === '--backend' || flag === '--busy-poll-us') { /* surge-only flags */ }
    else throw new Error(`unknown flag ${flag}`);
  }
  if (out.workers !== 1) {
    // uWebSockets.js runs one event loop on the main thread; pub/sub does not cross threads.
    console.error(`uws peer: --workers ${out.workers} ignored, uWebSockets.js runs one thread`);
  }
  return out;
}

function load() {
  const dir = process.env.SURGE_UWS_DIR ||
    path.join(__dirname, '..', '..', '..', 'target', 'uws-peer');
  // The native addon itself, not the package's entry point: that one silently falls back to a
  // pure-JS implementation over the `ws` package when the binary does not load.
  const binary = path.join(dir, 'node_modules', '@trufflesuite', 'uws-js-unofficial', 'binaries',
    `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
  return require(binary);
}

module.exports = { args, load };
