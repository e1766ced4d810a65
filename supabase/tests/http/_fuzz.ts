// fast-check arbitraries built from the gateway's own OpenAPI document: for every schema node,
// mostly what the schema allows (so requests get past validation and reach SQL) and, at any depth,
// what it does not — wrong types, huge and hostile strings (NUL, unpaired surrogates, SQL and header
// injection, path traversal), negative and enormous numbers, deep nesting. Raw-body mutations go
// further: invalid UTF-8, duplicate keys, truncation, a BOM, trailing garbage.

import fc from 'fast-check'

// deno-lint-ignore no-explicit-any
export type Schema = Record<string, any>
export type OpenApi = { paths: Record<string, Record<string, Schema>>; components: Schema }

export const HOSTILE_STRINGS = [
  '',
  ' ',
  'a\u0000b',
  '\u0000',
  'a\ud800b',
  '\udc00',
  "'; drop table gateway.ledger; --",
  "1' or '1'='1",
  '"); select pg_sleep(10); --',
  '$$; select 1; $$',
  'a\r\nSet-Cookie: injected=1',
  'x\nX-Injected: 1',
  '../../../etc/passwd',
  '%00%0d%0a',
  '${jndi:ldap://example.com/a}',
  '<script>alert(1)</script>',
  '\u202eevil',
  '🦀'.repeat(50),
  'NaN',
  'Infinity',
  '-0',
  '1e309',
  '0x10',
  'null',
  'true',
  '[]',
  '{}',
  'gw_live_000000000000000000000000000000',
  'x'.repeat(10_000),
  'é'.repeat(3_000),
]

export const HOSTILE_NUMBERS = [
  -1,
  0,
  -0,
  0.5,
  -2147483649,
  2147483648,
  2 ** 53,
  2 ** 63,
  -(2 ** 63),
  1e308,
  -1e308,
  Number.MIN_VALUE,
  Number.MAX_SAFE_INTEGER,
  -Number.MAX_SAFE_INTEGER,
]

/** JSON nested `depth` arrays deep, as text (JSON.stringify would recurse). */
export const deepJson = (depth: number) => '['.repeat(depth) + ']'.repeat(depth)

/** Anything but what a schema wants. */
export const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(...HOSTILE_STRINGS),
  fc.constantFrom(...HOSTILE_NUMBERS),
  fc.constantFrom(null, true, false, [], {}, [null], { '': null }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.jsonValue({ maxDepth: 3 }),
  fc.integer({ min: 2, max: 300 }).map((d) => JSON.parse(deepJson(d))),
)

function resolve(s: Schema, doc: OpenApi): Schema {
  let out = s
  for (let i = 0; out?.$ref && i < 10; i++) {
    out = doc.components.schemas[String(out.$ref).split('/').pop()!]
  }
  return out ?? {}
}

/** Values the gateway's fields are likely to accept, so some inputs get deep into the SQL. */
function goodString(s: Schema): fc.Arbitrary<string> {
  if (s.format === 'email') return fc.emailAddress().filter((e) => e.length <= 254)
  if (s.format === 'date-time') {
    return fc.date({
      min: new Date('1970-01-01'),
      max: new Date('9999-01-01'),
      noInvalidDate: true,
    })
      .map((d) => d.toISOString())
  }
  const min = s.minLength ?? 0
  const max = Math.min(s.maxLength ?? 64, 64)
  const arbs: fc.Arbitrary<string>[] = [
    fc.string({ minLength: min, maxLength: Math.max(min, max) }),
  ]
  if (s.example !== undefined && typeof s.example === 'string') arbs.push(fc.constant(s.example))
  return fc.oneof(...arbs)
}

/**
 * A VALID value of `schema` (overrides aside): what the schema allows, so that a single mutation
 * of it is all that stands between the input and the SQL below the gateway. `overrides` replaces
 * the arbitrary of named properties (targets of admin calls, which must not name other people's
 * accounts on a shared database).
 */
export function validFromSchema(
  schema: Schema,
  doc: OpenApi,
  overrides: Record<string, fc.Arbitrary<unknown>> = {},
  depth = 0,
): fc.Arbitrary<unknown> {
  const s = resolve(schema, doc)
  const variants = s.anyOf ?? s.oneOf
  const next = (x: Schema) => validFromSchema(x, doc, overrides, depth + 1)
  if (variants) return fc.oneof(...variants.map(next))
  if (s.enum) return fc.constantFrom(...s.enum)
  if (Array.isArray(s.type)) return fc.oneof(...s.type.map((t: string) => next({ ...s, type: t })))
  switch (s.type) {
    case 'null':
      return fc.constant(null)
    case 'boolean':
      return fc.boolean()
    case 'string':
      return goodString(s)
    case 'integer':
      return fc.integer({
        min: Math.max(s.minimum ?? -1_000_000, -(2 ** 31)),
        max: Math.min(s.maximum ?? 1_000_000, 2 ** 31),
      })
    case 'number':
      return fc.double({ min: s.minimum ?? -1e6, max: s.maximum ?? 1e6, noNaN: true })
    case 'array':
      return fc.array(depth > 4 ? fc.constant(null) : next(s.items ?? {}), {
        minLength: s.minItems ?? 0,
        maxLength: Math.min(s.maxItems ?? 3, 3),
      })
    case 'object': {
      const props = Object.fromEntries(
        Object.entries((s.properties ?? {}) as Record<string, Schema>).map(([k, v]) => [
          k,
          overrides[k] ?? next(v),
        ]),
      )
      return fc.record(props, { requiredKeys: s.required ?? [] })
    }
  }
  return fc.jsonValue({ maxDepth: 2 })
}

/** Every node of a JSON value, depth first, as [parent, key] (the root as [null, null]). */
function nodes(v: unknown): [Record<string, unknown> | unknown[] | null, string | number | null][] {
  const out: [Record<string, unknown> | unknown[] | null, string | number | null][] = [
    [null, null],
  ]
  const walk = (x: unknown) => {
    if (Array.isArray(x)) x.forEach((_, i) => (out.push([x, i]), walk(x[i])))
    else if (x && typeof x === 'object') {
      for (const k of Object.keys(x)) {
        out.push([x as Record<string, unknown>, k])
        walk((x as Record<string, unknown>)[k])
      }
    }
  }
  walk(v)
  return out
}

/**
 * One mutation of a valid value: a node (picked by `at`) replaced by a hostile value of the same
 * JSON type when it has one (a NUL in an otherwise valid string goes all the way to Postgres), else
 * by anything; or an unknown property added to an object.
 */
function mutate(value: unknown, at: number, pick: number, anything: unknown): unknown {
  const copy = structuredClone(value)
  const all = nodes(copy)
  const [parent, key] = all[at % all.length]
  const old = parent === null ? copy : (parent as Record<string | number, unknown>)[key!]
  const replacement = typeof old === 'string'
    ? HOSTILE_STRINGS[pick % HOSTILE_STRINGS.length]
    : typeof old === 'number'
    ? HOSTILE_NUMBERS[pick % HOSTILE_NUMBERS.length]
    : old && typeof old === 'object' && !Array.isArray(old) && pick % 2
    ? { ...old, [`x${pick % 7}`]: anything }
    : anything
  if (parent === null) return replacement
  ;(parent as Record<string | number, unknown>)[key!] = replacement
  return copy
}

/**
 * A body for `schema`: mostly valid with exactly one hostile node, sometimes entirely valid (it
 * must work), sometimes anything at all.
 */
export function fromSchema(
  schema: Schema,
  doc: OpenApi,
  overrides: Record<string, fc.Arbitrary<unknown>> = {},
): fc.Arbitrary<unknown> {
  const valid = validFromSchema(schema, doc, overrides)
  const mutated = fc.tuple(valid, fc.nat(), fc.nat(), hostile)
    .map(([v, at, pick, anything]) => mutate(v, at, pick, anything))
  return fc.oneof(
    { weight: 2, arbitrary: valid },
    { weight: 6, arbitrary: mutated },
    { weight: 1, arbitrary: hostile },
  )
}

/** A body as fetch takes it. */
export type RawBody = string | Uint8Array<ArrayBuffer>

/** A body as sent: JSON text of the value, or a raw mutation of it (bytes). */
export function rawBody(value: fc.Arbitrary<unknown>): fc.Arbitrary<RawBody> {
  const text = value.map((v) => JSON.stringify(v) ?? 'null')
  const enc = new TextEncoder()
  return fc.oneof(
    { weight: 6, arbitrary: text },
    // truncated
    { weight: 1, arbitrary: text.map((t) => t.slice(0, Math.floor(t.length / 2))) },
    // a duplicate key that contradicts the first (the last wins in JSON.parse and in jsonb)
    { weight: 1, arbitrary: text.map((t) => t.replace(/^\{/, '{"credits":"x","key_name":7,')) },
    // invalid UTF-8 inside a string
    {
      weight: 1,
      arbitrary: text.map((t) =>
        Uint8Array.from([
          ...enc.encode('{"x":"'),
          ...[0xff, 0xc3, 0x28, 0xed, 0xa0, 0x80],
          ...enc.encode(`","v":${t}}`),
        ])
      ),
    },
    { weight: 1, arbitrary: text.map((t) => `\ufeff${t}`) },
    { weight: 1, arbitrary: text.map((t) => `${t}}]garbage`) },
    { weight: 1, arbitrary: fc.constantFrom('', 'null', '[]', '"x"', '1e999', deepJson(100_000)) },
  )
}
