// Exact USD amounts: prices and costs are BigInt counts of 1e-18 USD ("atto-dollars"), parsed from
// and printed as decimal strings, so a cost is the exact sum of count × price with no float step.
// Catalog prices have at most 10 decimals; 18 leaves room for every product and sum.

export const DECIMALS = 18
const ONE = 10n ** BigInt(DECIMALS)

/** `"0.0000025"` → 2500000000000n. Throws on anything but a plain decimal with ≤ 18 decimals. */
export function parseUsd(text: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text)
  if (!m || (m[3]?.length ?? 0) > DECIMALS) throw new Error(`not a USD decimal: ${text}`)
  const value = BigInt(m[2]) * ONE + BigInt((m[3] ?? '').padEnd(DECIMALS, '0'))
  return m[1] ? -value : value
}

/** 2500000000000n → `"0.0000025"`: the shortest exact decimal, never an exponent. */
export function formatUsd(atto: bigint): string {
  const sign = atto < 0n ? '-' : ''
  const abs = atto < 0n ? -atto : atto
  const whole = abs / ONE
  const frac = (abs % ONE).toString().padStart(DECIMALS, '0').replace(/0+$/, '')
  return `${sign}${whole}${frac ? '.' + frac : ''}`
}

// JSON.rawJSON (V8 ≥ 11.4) writes a number literal as given; Deno's lib types lack it.
const rawJSON = (JSON as unknown as { rawJSON(text: string): unknown }).rawJSON

/**
 * The amount as a JSON number whose text is the exact decimal (JSON.stringify writes it verbatim):
 * `{"cost":0.0000175}`, never `1.7500000000000002e-5`.
 */
export function usdJson(atto: bigint): unknown {
  return rawJSON(formatUsd(atto))
}

/** The nearest double, for stats and comparisons in tests (the JSON carries the exact text). */
export function usdNumber(atto: bigint): number {
  return Number(formatUsd(atto))
}
