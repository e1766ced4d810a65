// The README's quickstart works verbatim: every ```sh block that follows a `<!-- quickstart -->`
// line in README.md (read here, not copied) runs in one shell, as a newcomer would paste it, against
// the stack. Its first call must be a completion, not a 402 for an account without credits.
//
// The environment is the suite's (the same FUNCTIONS_* limits and STACK_UPSTREAM, so `stack.sh
// start` finds the stack as it is) without the GATEWAY_*/OPENROUTER_* a test may have set in this
// process: a newcomer has none. As on a fresh stack, the quickstart's account (ops@example.com)
// starts with no credits: if it exists, its balance is set aside and put back afterwards, and the
// admin key the quickstart made is deactivated.

import assert from 'node:assert/strict'
import { db, test } from '../lib/stack.ts'

const ROOT = new URL('../../../', import.meta.url).pathname

function quickstart(readme: string): string {
  const blocks: string[] = []
  const lines = readme.split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '<!-- quickstart -->') continue
    let j = i + 1
    while (j < lines.length && lines[j].trim() === '') j++
    assert.equal(
      lines[j]?.trim(),
      '```sh',
      `README.md:${i + 1}: a quickstart marker without a sh block`,
    )
    const end = lines.indexOf('```', j + 1)
    blocks.push(lines.slice(j + 1, end).join('\n'))
    i = end
  }
  return blocks.join('\n')
}

test("the README's quickstart runs verbatim and its first completion is served", async () => {
  const script = quickstart(await Deno.readTextFile(`${ROOT}README.md`))
  assert.match(script, /stack\.sh start/)
  assert.match(script, /chat\/completions/)
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !/^(GATEWAY_|OPENROUTER_)/.test(k)),
  )
  const [{ now }] = await db()`select now() as now`
  const [ops] = await db()`
    select a.id, b.balance::int from gateway.accounts a
      join gateway.credit_balances b on b.account_id = a.id
     where lower(a.email) = 'ops@example.com'`
  const setTo = async (credits: number, why: string) => {
    const [b] = await db()`select balance::int from gateway.credit_balances
      where account_id = ${ops.id}`
    if (b.balance !== credits) {
      await db()`select * from gateway.add_credits(${ops.id}, ${credits - b.balance}, ${why})`
    }
  }
  if (ops) await setTo(0, 'README quickstart test: no credits, as on a fresh stack')
  const out = await new Deno.Command('bash', {
    args: ['-euo', 'pipefail', '-c', script],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdout: 'piped',
    stderr: 'piped',
  }).output()
  const stdout = new TextDecoder().decode(out.stdout)
  const stderr = new TextDecoder().decode(out.stderr)
  try {
    assert.equal(out.code, 0, `${stdout}\n${stderr}`)
    assert.match(stdout, /"status":"ok"/, 'the health check')
    assert.match(stdout, /"object":"chat.completion"/, stdout)
    assert.doesNotMatch(stdout, /insufficient_credits/)
  } finally {
    // What the quickstart created: an admin key of ops@example.com. Off again, so that the keys a
    // person finds in their stack are theirs.
    const keys = await db()`
      select k.id from gateway.api_keys k join gateway.accounts a on a.id = k.account_id
       where lower(a.email) = 'ops@example.com' and k.created_at >= ${now} and k.is_active`
    for (const k of keys) {
      await db()`select gateway.deactivate_key(${k.id}, 'README quickstart test')`
    }
    if (ops) await setTo(ops.balance, 'README quickstart test: balance put back')
  }
})
