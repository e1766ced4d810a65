// scripts/serve-functions.ts unchanged, but listening on FUNCTIONS_HOSTNAME (e.g. ::1) instead of
// 127.0.0.1: the IPv6 tests need the stand-in's own X-Forwarded-For handling over a real IPv6
// connection. Deno.serve is wrapped before the script runs; the script's own capture of the
// functions' Deno.serve calls restores this wrapper, which only rebinds the 127.0.0.1 listener.

const hostname = Deno.env.get('FUNCTIONS_HOSTNAME') ?? '127.0.0.1'
const realServe = Deno.serve
const serve = (...args: unknown[]) => {
  const [first] = args
  if (typeof first === 'object' && first !== null && 'hostname' in first) {
    args[0] = { ...first, hostname }
  }
  return (realServe as (...a: unknown[]) => unknown)(...args)
}
Object.defineProperty(Deno, 'serve', { value: serve, writable: true, configurable: true })

await import('../../../scripts/serve-functions.ts')
