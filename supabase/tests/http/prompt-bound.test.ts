// A hostile body against the prompt bound (requestFacts): the hold covers the bytes of the body as
// it goes upstream, on the premise that upstream never bills more tokens than bytes. Upstream
// renders a tool's schema (and any part it does not know) as the compact JSON of its parsed value
// (the simulator: JSON.stringify, tokens.ts), and a number written with an exponent is longer
// parsed and printed again than as written: `1e20` is 4 bytes in the body, 21 digits (21 tokens)
// in the prompt upstream bills.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits, settled, usageRecords } from '../lib/accounts.ts'
import { api } from '../lib/http.ts'
import { simLastReceived } from '../lib/sim.ts'
import { test } from '../lib/stack.ts'

const LOTS = 1_000_000_000
const NUMBERS = 20_000

/** A body whose tool schema holds `NUMBERS` copies of `number`, as written (not JSON.stringify). */
function bodyWith(number: string, where: 'tool' | 'part'): string {
  const list = `[${Array(NUMBERS).fill(number).join(',')}]`
  const content = where === 'part'
    ? `[{"type":"text","text":"hi"},{"type":"x-unknown","values":${list}}]`
    : '"hi"'
  const tools = where === 'tool'
    ? `,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",` +
      `"enum":${list}}}}]`
    : ''
  return `{"model":"openai/gpt-4o-mini","max_tokens":10,` +
    `"messages":[{"role":"user","content":${content}}]${tools}}`
}

for (const where of ['tool', 'part'] as const) {
  test(`numbers written with an exponent in a ${where} (1e20: 4 bytes, 21 tokens upstream): held in full, never an overrun`, async () => {
    const a = await newAccount(1_000_000, 'exponent')
    await setRateLimits(a.userId, {
      tokens_per_minute: LOTS,
      tokens_per_hour: LOTS,
      tokens_per_day: LOTS,
    })
    const text = bodyWith('1e20', where)
    const r = await api('/v1/chat/completions', { key: a.key, body: text })
    assert.equal(r.status, 200, r.text.slice(0, 300))
    // What went upstream is the body as written: its numbers are still 4 bytes each there.
    const sent = await simLastReceived()
    assert.ok(JSON.stringify(sent.body).length > 4 * text.length, 'upstream re-renders 1e20 long')
    const u = await settled(a.userId, 1)
    const [record] = await usageRecords(a.userId)
    assert.equal(record.hold_id, u.hold_id)
    assert.ok(
      record.prompt_tokens <= record.facts.prompt_bound,
      `upstream billed ${record.prompt_tokens} prompt tokens, the hold covered ${record.facts.prompt_bound}`,
    )
    assert.equal(
      record.overrun_credits,
      0,
      `charged ${record.credits_charged}, held ${record.credits_held}`,
    )
    assert.ok((await balance(a.userId)).balance >= 0)
  })
}
