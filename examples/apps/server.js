// A Node.js HTTP server to run under baton, unchanged apart from where it
// listens and how it drains:
//
//     baton run -l 127.0.0.1:8080 --ready fd -- node server.js
//
// * it listens on the socket baton passes as fd 3 (`{ fd: 3 }`; LISTEN_FDS
//   says how many there are);
// * it reports ready by writing a newline to the fd named by BATON_READY_FD
//   (`--ready fd`; Node cannot send sd_notify without a native module);
// * on SIGTERM it drains without failing a request: it stops accepting
//   (the socket stays open in baton, so new connections wait for the next
//   generation), answers requests still arriving on open keep-alive
//   connections with `Connection: close`, closes connections that stay idle
//   after a short grace, and exits once every connection is closed.
//
// Note: `server.close()` in Node >= 19 also closes idle keep-alive
// connections at once, without answering; a client that had just sent a
// request on one sees a reset. Hence `net.Server.prototype.close` below.

'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');

const generation = process.env.BATON_GENERATION || '';
const graceMs = Number(process.env.DRAIN_GRACE_MS || 500);
let draining = false;

const server = http.createServer((req, res) => {
  const body = `hello from generation ${generation}, pid ${process.pid}\n`;
  const headers = {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    'X-Generation': generation,
    'X-Pid': String(process.pid),
  };
  if (draining) {
    headers.Connection = 'close';
  }
  res.writeHead(200, headers);
  res.end(body);
});
server.keepAliveTimeout = 30000;

server.listen({ fd: 3 }, () => {
  console.log(`server.js gen=${generation} pid=${process.pid} listening on fd 3`);
  const readyFd = process.env.BATON_READY_FD;
  if (readyFd) {
    fs.writeSync(Number(readyFd), '\n');
    fs.closeSync(Number(readyFd));
  }
});

process.on('SIGTERM', () => {
  if (draining) {
    return;
  }
  draining = true;
  console.log(`server.js gen=${generation} pid=${process.pid} draining`);
  // Stop accepting, without closing idle connections yet.
  net.Server.prototype.close.call(server, () => {
    console.log(`server.js gen=${generation} pid=${process.pid} exiting`);
    process.exit(0);
  });
  // Connections still idle after the grace get closed (nobody is using
  // them); busy ones close after their `Connection: close` response.
  setTimeout(() => server.closeIdleConnections(), graceMs).unref();
});
