// Preloaded into Portkey's gateway (`node --import ./bench/loopback.mjs …`). Its start-server.js
// calls @hono/node-server's serve({ port }) with no hostname, so it would listen on every
// interface and has no flag to say otherwise; this pins every server it opens to 127.0.0.1.
import net from 'node:net'

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  // listen(port[, host][, backlog][, cb]) or listen({ port, host, … }[, cb])
  if (typeof args[0] === 'object' && args[0] !== null) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  } else if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    if (typeof args[1] === 'string') args[1] = '127.0.0.1'
    else args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
