// What a request is charged, computed here so that a response can report it without waiting for
// settle_request (which runs after the response, in background).
//
// DUPLICATE of SQL's `gateway.credits_for` (latest definition: migration
// 20261125153547_lean_request_path, the same formula since 20261125135251), the one
// definition settle_request charges by: ceil(prompt × prompt multiplier + completion × completion
// multiplier), in exact decimal arithmetic. supabase/tests/http/credits.test.ts checks that this
// equals what settle_request charges over random token counts and multipliers; change both together.
//
// The multipliers arrive as decimal text (begin_request's `prompt_multiplier`/`completion_multiplier`,
// numeric::text): a JSON number would be a double, and ceil(3 × 0.1 + 7 × 0.1) must be 1, not 2.

const DECIMAL = /^(\d+)(?:\.(\d+))?$/

/** A non-negative decimal's digits as an integer, and how many of them are after the point. */
function parseDecimal(text: string): [bigint, number] {
  const m = DECIMAL.exec(text)
  if (!m) throw new TypeError(`not a non-negative decimal: ${text}`)
  const fraction = m[2] ?? ''
  return [BigInt(m[1] + fraction), fraction.length]
}

/** Credits for `promptTokens` + `completionTokens` (non-negative integers) at these multipliers. */
export function creditsFor(
  promptTokens: number,
  completionTokens: number,
  promptMultiplier: string,
  completionMultiplier: string,
): number {
  const [pm, pScale] = parseDecimal(promptMultiplier)
  const [cm, cScale] = parseDecimal(completionMultiplier)
  const scale = Math.max(pScale, cScale)
  const total = BigInt(promptTokens) * pm * 10n ** BigInt(scale - pScale) +
    BigInt(completionTokens) * cm * 10n ** BigInt(scale - cScale)
  const unit = 10n ** BigInt(scale)
  // Both terms are >= 0, so rounding the quotient up is ceil.
  return Number((total + unit - 1n) / unit)
}
