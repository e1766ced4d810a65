// The caller's identity as the request presents it: the gateway key (checked for shape and checksum
// here, so a missing or mistyped key is a 401 that costs no query), the client's address and the
// referrer host. Whether that identity may do anything (active, expiry, IP allowlist, referrer
// rule, permission) is decided in SQL, which receives only the key's SHA-256.
//
// Client address: Supabase's edge (and scripts/serve-functions.ts locally) APPENDS the address it
// received the connection from to X-Forwarded-For, so only the LAST entry is trustworthy; earlier
// entries are whatever the client chose to send.

import type { Context } from 'hono'
import { hashKey, isWellFormedKey } from '../_shared/keys.ts'
import type { SqlArg } from './db.ts'
import { ApiError } from './errors.ts'

export interface Caller {
  /** SHA-256 of the presented key. */
  keyHash: Uint8Array
  /** Client address (for IP allowlists and registration limits), or null when unknown. */
  ip: string | null
  /** Host of the Origin or Referer header (for referrer rules), or null. */
  referrer: string | null
}

const BEARER = /^Bearer\s+(\S+)\s*$/i

/** The key from `Authorization: Bearer …`; 401 when it is absent or not a gateway key. */
export function presentedKey(c: Context): string {
  const header = c.req.header('authorization')
  if (!header) {
    throw new ApiError(
      401,
      'Missing API key: send it as "Authorization: Bearer <gateway key>"',
      { code: 'missing_api_key' },
    )
  }
  const key = BEARER.exec(header)?.[1]
  if (!key || !isWellFormedKey(key)) {
    throw new ApiError(401, 'Invalid API key', { code: 'invalid_api_key' })
  }
  return key
}

const IP_CHARS = /^[0-9A-Fa-f:.]{2,45}$/

/** The last X-Forwarded-For entry, else the socket's peer address. */
export function clientIp(c: Context): string | null {
  const forwarded = c.req.header('x-forwarded-for')
  let ip: string | undefined
  if (forwarded) {
    const last = forwarded.slice(forwarded.lastIndexOf(',') + 1).trim()
    ip = last.startsWith('[') ? last.slice(1, last.indexOf(']')) : last
  } else {
    const info = c.env as Deno.ServeHandlerInfo | undefined
    const addr = info?.remoteAddr as Deno.NetAddr | undefined
    ip = addr?.hostname
  }
  // Anything that is not plainly an address would make the inet cast fail: treat it as unknown.
  return ip && IP_CHARS.test(ip) ? ip : null
}

/**
 * The client's network, as a key for per-client shares (body-guard.ts): an IPv4 address's /24, an
 * IPv6 address's /64 (an IPv4-mapped one, `::ffff:a.b.c.d`, is the IPv4 /24) — the grouping of the
 * sign-up limits, since one client commonly holds a whole /64 or several addresses of a /24.
 * Unknown (null) addresses share one network.
 */
export function clientNetwork(ip: string | null): string {
  if (!ip) return 'unknown'
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.\d{1,3}$/.exec(ip)
  if (v4) return `${v4[1]}.${v4[2]}.${v4[3]}.0/24`
  const groups = ipv6Groups(ip)
  if (!groups) return ip
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [a, b] = [groups[6], groups[7]]
    return `${a >> 8}.${a & 0xff}.${b >> 8}.0/24`
  }
  return `${groups.slice(0, 4).map((g) => g.toString(16)).join(':')}::/64`
}

/** The eight 16-bit groups of an IPv6 address (`::` and a trailing dotted quad allowed), or null. */
function ipv6Groups(ip: string): number[] | null {
  let text = ip.toLowerCase()
  const quad = /^(.*:)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text)
  if (quad) {
    const b = quad.slice(2).map(Number)
    if (b.some((x) => x > 255)) return null
    text = `${quad[1]}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`
  }
  const halves = text.split('::')
  if (halves.length > 2) return null
  const parse = (part: string) => (part === '' ? [] : part.split(':'))
  const head = parse(halves[0])
  const tail = halves.length === 2 ? parse(halves[1]) : []
  const missing = 8 - head.length - tail.length
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null
  const all = [...head, ...Array(halves.length === 2 ? missing : 0).fill('0'), ...tail]
  if (!all.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return null
  return all.map((g) => parseInt(g, 16))
}

/** Host name of the Origin header, else of the Referer header; null when neither parses. */
export function referrerHost(c: Context): string | null {
  for (const name of ['origin', 'referer']) {
    const value = c.req.header(name)
    if (!value || value === 'null') continue
    try {
      return new URL(value).hostname || null
    } catch {
      // An unparsable header names no host; try the next one.
    }
  }
  return null
}

/** The caller's identity: what SQL needs to authenticate and authorize the request. */
export function caller(c: Context): Caller {
  const key = presentedKey(c)
  return { keyHash: hashKey(key), ip: clientIp(c), referrer: referrerHost(c) }
}

/** The leading `(p_key_hash, p_client_ip, p_referrer)` of every authenticated SQL call. */
export function callerArgs(who: Caller): SqlArg[] {
  return [who.keyHash, who.ip, who.referrer]
}
