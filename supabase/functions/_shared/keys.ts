// Gateway API keys on the TypeScript side: the shape + checksum check that lets a mistyped key be
// refused without a query, the SHA-256 that is all the database ever sees of a key, and the masked
// form shown in responses. Keys are generated only in SQL (`gateway.generate_key`); this file must
// agree with `gateway.key_checksum` (docs/SQL-API.md, "Keys"), and a Deno test checks it does.
//
//   gw_<env>_<body><checksum>   env ∈ live|test|staging|dev, body = 22 base62 chars,
//                               checksum = CRC32("gw_<env>_<body>") in 6 base62 chars, zero-padded

import { Buffer } from 'node:buffer'
import { createHash } from 'node:crypto'

export const KEY_ENVIRONMENTS = ['live', 'test', 'staging', 'dev'] as const
export type KeyEnvironment = typeof KEY_ENVIRONMENTS[number]

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
const BODY_LENGTH = 22
const CHECKSUM_LENGTH = 6
const KEY_PATTERN = /^gw_(?:live|test|staging|dev)_[0-9A-Za-z]{28}$/

// IEEE 802.3 CRC32 (zlib's), table built once per isolate.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** CRC32 of an ASCII string (keys are ASCII by construction). */
export function crc32(ascii: string): number {
  let crc = 0xffffffff
  for (let i = 0; i < ascii.length; i++) {
    crc = CRC_TABLE[(crc ^ ascii.charCodeAt(i)) & 0xff] ^ (crc >>> 8)
  }
  return (crc ^ 0xffffffff) >>> 0
}

/** `n` in base62, left-padded with '0' to `width`. */
export function base62(n: number, width: number): string {
  let out = ''
  do {
    out = BASE62[n % 62] + out
    n = Math.floor(n / 62)
  } while (n > 0)
  return out.padStart(width, '0')
}

/** The 6-character checksum of `gw_<env>_<body>`. */
export function keyChecksum(prefixAndBody: string): string {
  return base62(crc32(prefixAndBody), CHECKSUM_LENGTH)
}

/** True when `key` has the gateway key shape and a valid checksum. Costs no I/O. */
export function isWellFormedKey(key: string): boolean {
  if (!KEY_PATTERN.test(key)) return false
  const split = key.length - CHECKSUM_LENGTH
  return keyChecksum(key.slice(0, split)) === key.slice(split)
}

/** The environment tag of a well-formed key. */
export function keyEnvironment(key: string): KeyEnvironment {
  return key.slice(3, key.indexOf('_', 3)) as KeyEnvironment
}

/**
 * SHA-256 of the key: the only form in which a key reaches the database. node:crypto's synchronous
 * hash, because WebCrypto's `crypto.subtle.digest` cost 38 µs a call here against 2 µs (profiled on
 * every authenticated request; docs/PERFORMANCE.md). UTF-8, as SQL's gateway.hash_key.
 */
export function hashKey(key: string): Uint8Array {
  const digest = createHash('sha256').update(key, 'utf8').digest()
  return new Uint8Array(digest.buffer, digest.byteOffset, digest.byteLength)
}

/** Lower-case hex of bytes (for `{"api_key_hash": "<hex>"}` targets). */
export function toHex(bytes: Uint8Array): string {
  // Native: a key's hash is written as hex twice per chat request (reservations.ts); 0.2 µs a
  // call against 0.7–0.8 for a loop of padStart.
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
}

/** The display form stored as `key_prefix`: the first 12 characters and an ellipsis. */
export function maskKey(key: string): string {
  return `${key.slice(0, 12)}…`
}

const KEY_SHAPED = /gw_(?:live|test|staging|dev)_[0-9A-Za-z]{28}/g

/**
 * `text` with anything shaped like a gateway key cut to its display prefix: for text that may echo
 * what a client sent (a model name, an upstream error quoting the request) on its way to a log or
 * an error message. A client that pastes its key into the wrong field must not see it come back.
 */
export function maskKeysIn(text: string): string {
  return text.includes('gw_') ? text.replace(KEY_SHAPED, maskKey) : text
}

export const KEY_BODY_LENGTH = BODY_LENGTH
