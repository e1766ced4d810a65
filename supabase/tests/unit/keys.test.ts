// _shared/keys.ts on its own: the checksum is zlib's CRC32, a key of the right shape and checksum
// passes and any single changed character fails (no query is needed to refuse a mistyped key), the
// hash is SHA-256, the display prefix and the masking of key-shaped text. That SQL generates keys
// this check accepts, with the same hash and prefix, is http/keys.test.ts's.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import {
  base62,
  crc32,
  hashKey,
  isWellFormedKey,
  KEY_ENVIRONMENTS,
  keyChecksum,
  keyEnvironment,
  maskKey,
  maskKeysIn,
  toHex,
} from '../../functions/_shared/keys.ts'

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

/** A key as gateway.generate_key makes one: 22 random base62 characters and their checksum. */
const key = fc.record({
  env: fc.constantFrom(...KEY_ENVIRONMENTS),
  body: fc.array(fc.constantFrom(...BASE62), { minLength: 22, maxLength: 22 }),
}).map(({ env, body }) => {
  const head = `gw_${env}_${body.join('')}`
  return head + keyChecksum(head)
})

Deno.test('crc32 is zlib\'s (check value of "123456789"); base62 pads to its width', () => {
  assert.equal(crc32('123456789'), 0xcbf43926)
  assert.equal(crc32(''), 0)
  assert.equal(base62(0, 6), '000000')
  assert.equal(base62(61, 2), '0z')
  assert.equal(base62(0xffffffff, 6), '4gfFC3')
})

Deno.test('a well-formed key passes; any one character changed, or the wrong shape, fails', () => {
  fc.assert(
    fc.property(key, fc.nat(), fc.constantFrom(...BASE62), (k, at, c) => {
      assert.ok(isWellFormedKey(k), k)
      assert.ok(KEY_ENVIRONMENTS.includes(keyEnvironment(k)))
      const i = 3 + keyEnvironment(k).length + 1 + (at % 28)
      if (k[i] !== c) assert.equal(isWellFormedKey(k.slice(0, i) + c + k.slice(i + 1)), false)
    }),
    { numRuns: 1000 },
  )
  const k = fc.sample(key, 1)[0]
  for (
    const bad of [
      '',
      'gw_live_',
      k.slice(0, -1),
      `${k}x`,
      k.replace(/^gw_[a-z]+_/, 'gw_prod_'),
      `sk-${k}`,
      ` ${k}`,
      k.toUpperCase(),
    ]
  ) {
    assert.equal(isWellFormedKey(bad), false, bad)
  }
})

Deno.test('hashKey is the SHA-256 of the key; the prefix is its first 12 characters', () => {
  for (const k of fc.sample(key, 20)) {
    assert.equal(toHex(hashKey(k)), createHash('sha256').update(k).digest('hex'))
    assert.equal(maskKey(k), `${k.slice(0, 12)}…`)
  }
  assert.equal(toHex(new Uint8Array([0, 15, 255])), '000fff')
})

Deno.test('maskKeysIn cuts every key-shaped run to its prefix, and leaves other text alone', () => {
  const [a, b] = fc.sample(key, 2)
  assert.equal(maskKeysIn(`model ${a} and ${b}!`), `model ${maskKey(a)} and ${maskKey(b)}!`)
  assert.equal(maskKeysIn('gw_live_short'), 'gw_live_short')
  assert.equal(maskKeysIn('nothing here'), 'nothing here')
})
