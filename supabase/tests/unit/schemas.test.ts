// The request schemas (schemas.ts, chat-request.ts) on their own: what each accepts, what it refuses
// and where it says the fault is (the first issue's path becomes the 400's `param`). The HTTP tests
// show the same through the routes; these say it of every rule, without a stack.

import assert from 'node:assert/strict'
import { ChatCompletionRequest } from '../../functions/gateway/chat-request.ts'
import * as s from '../../functions/gateway/schemas.ts'

type Schema = { safeParse(v: unknown): { success: boolean; data?: unknown; error?: unknown } }

/** The path of the first issue, or 'ok'. */
function verdict(schema: Schema, value: unknown): string {
  const r = schema.safeParse(value)
  if (r.success) return 'ok'
  const issue = (r.error as { issues: { path: PropertyKey[] }[] }).issues[0]
  return issue.path.join('.') || '(body)'
}

const KEY = 'gw_live_' + 'a'.repeat(28)
const MSG = [{ role: 'user', content: 'hi' }]

Deno.test('chat: model or models, non-empty messages of known roles, one choice, sane caps', () => {
  const cases: [unknown, string][] = [
    [{ model: 'm', messages: MSG }, 'ok'],
    [{ models: ['a', 'b'], messages: MSG }, 'ok'],
    [{ messages: MSG }, 'model'],
    [{ model: '', messages: MSG }, 'model'],
    [{ model: 'm', messages: [] }, 'messages'],
    [{ model: 'm', messages: [{ role: 'robot', content: 'x' }] }, 'messages.0.role'],
    [{ model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'x' }] }] }, 'ok'],
    [{ model: 'm', messages: [{ role: 'assistant', content: null, tool_calls: [] }] }, 'ok'],
    [{ model: 'm', messages: MSG, n: 2 }, 'n'],
    [{ model: 'm', messages: MSG, n: 1 }, 'ok'],
    [{ model: 'm', messages: MSG, max_tokens: 0 }, 'max_tokens'],
    [{ model: 'm', messages: MSG, max_tokens: 1.5 }, 'max_tokens'],
    [{ model: 'm', messages: MSG, max_completion_tokens: 10_000_001 }, 'max_completion_tokens'],
    [{ model: 'm', messages: MSG, max_tokens: null }, 'ok'],
    [{ model: 'm', messages: MSG, temperature: 2.5 }, 'temperature'],
    [{ model: 'm', messages: MSG, stream: 'yes' }, 'stream'],
    [{ model: 'm', messages: MSG, models: [] }, 'models'],
    ['not an object', '(body)'],
  ]
  for (const [body, expected] of cases) {
    assert.equal(verdict(ChatCompletionRequest, body), expected, JSON.stringify(body))
  }
  // Whatever OpenRouter accepts beyond the fields the gateway depends on passes through untouched.
  const extra = {
    model: 'm',
    messages: MSG,
    tools: [{ type: 'function' }],
    provider: { order: ['x'] },
  }
  assert.deepEqual(ChatCompletionRequest.parse(extra), extra)
})

Deno.test('register: an email, an optional username, an environment (default live)', () => {
  assert.deepEqual(s.RegisterRequest.parse({ email: 'ada@example.com' }), {
    email: 'ada@example.com',
    environment: 'live',
  })
  assert.equal(verdict(s.RegisterRequest, { email: 'not-an-email' }), 'email')
  assert.equal(verdict(s.RegisterRequest, { email: 'a@b.co', environment: 'prod' }), 'environment')
  assert.equal(verdict(s.RegisterRequest, { email: 'a@b.co', username: '   ' }), 'username')
})

Deno.test('keys: create and update are strict; an update must change something', () => {
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci' }), 'ok')
  assert.equal(verdict(s.KeyCreate, {}), 'key_name')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', is_admin: true }), '(body)')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', permissions: ['root'] }), 'permissions.0')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', permissions: [] }), 'permissions')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', expires_in_days: 0 }), 'expires_in_days')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', expires_at: 'tomorrow' }), 'expires_at')
  assert.equal(verdict(s.KeyCreate, { key_name: 'ci', allowed_ips: ['1'] }), 'allowed_ips.0')
  assert.equal(verdict(s.KeyUpdate, {}), '(body)')
  assert.equal(verdict(s.KeyUpdate, { is_active: false }), 'ok')
  assert.deepEqual(s.KeyRotate.parse({}), { grace_seconds: 0 })
  assert.equal(verdict(s.KeyRotate, { grace_seconds: 8 * 24 * 3600 }), 'grace_seconds')
  assert.deepEqual(s.KeyIdParam.parse({ key_id: '42' }), { key_id: 42 })
  assert.equal(verdict(s.KeyIdParam, { key_id: '0' }), 'key_id')
  assert.equal(verdict(s.KeyIdParam, { key_id: '1e400' }), 'key_id')
})

Deno.test('profile: strict, and an update must change something', () => {
  assert.equal(verdict(s.ProfileUpdate, { full_name: 'Ada' }), 'ok')
  assert.equal(verdict(s.ProfileUpdate, {}), '(body)')
  assert.equal(verdict(s.ProfileUpdate, { credits: 1e9 }), '(body)')
  assert.equal(verdict(s.ProfileUpdate, { email: 'x' }), 'email')
})

Deno.test('admin: exactly one target; credits a non-zero integer; key-scoped limits name a key', () => {
  assert.equal(verdict(s.AddCredits, { user_id: 1, credits: 10 }), 'ok')
  assert.equal(verdict(s.AddCredits, { api_key: KEY, credits: -10 }), 'ok')
  assert.equal(verdict(s.AddCredits, { credits: 10 }), 'user_id')
  assert.equal(verdict(s.AddCredits, { user_id: 1, api_key: KEY, credits: 10 }), 'user_id')
  assert.equal(verdict(s.AddCredits, { user_id: 1, credits: 0 }), 'credits')
  assert.equal(verdict(s.AddCredits, { user_id: 1, credits: 0.5 }), 'credits')
  assert.equal(verdict(s.AddCredits, { user_id: 1, credits: 1e13 }), 'credits')
  const limits = { requests_per_minute: 60 }
  assert.equal(verdict(s.SetLimits, { user_id: 1, rate_limits: limits }), 'ok')
  assert.equal(verdict(s.SetLimits, { user_id: 1, rate_limits: limits, scope: 'key' }), 'scope')
  assert.equal(verdict(s.SetLimits, { api_key: KEY, rate_limits: limits, scope: 'key' }), 'ok')
  assert.equal(
    verdict(s.SetLimits, { user_id: 1, rate_limits: { requests_per_second: 1 } }),
    'rate_limits',
  )
  assert.equal(
    verdict(s.SetLimits, { user_id: 1, rate_limits: { tokens_per_day: -1 } }),
    'rate_limits.tokens_per_day',
  )
  assert.deepEqual(s.Page.parse({}), { limit: 100, offset: 0 })
  assert.deepEqual(s.Page.parse({ limit: '5', offset: '10' }), { limit: 5, offset: 10 })
  assert.equal(verdict(s.Page, { limit: '1001' }), 'limit')
})
