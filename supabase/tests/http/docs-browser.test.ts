// /docs (Swagger UI) and /redoc render in headless Chromium with no network but the gateway itself:
// every other request is blocked and must not happen. Screenshots go to .local/screenshots/.
// Uses Debian's /usr/bin/chromium (never a downloaded browser); skipped where it is not installed.

import assert from 'node:assert/strict'
import { chromium } from 'playwright-core'
import { GATEWAY_URL, test } from '../lib/stack.ts'

const CHROMIUM = Deno.env.get('CHROMIUM_PATH') ?? '/usr/bin/chromium'
const hasChromium = await Deno.stat(CHROMIUM).then(() => true, () => false)
const SHOTS = new URL('../../../.local/screenshots/', import.meta.url)

const ENDPOINTS = [
  '/gateway/v1/chat/completions',
  '/gateway/auth/register',
  '/gateway/user/balance',
  '/gateway/user/api-keys/usage',
  '/gateway/admin/add_credits',
  '/gateway/models/providers',
]

async function render(page: string, ready: string) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  })
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 2000 } })
    const blocked: string[] = []
    await context.route('**/*', (route) => {
      const url = route.request().url()
      if (url.startsWith(GATEWAY_URL) || url.startsWith('data:')) return route.continue()
      blocked.push(url)
      return route.abort()
    })
    const tab = await context.newPage()
    const errors: string[] = []
    tab.on('pageerror', (e) => errors.push(String(e)))
    const res = await tab.goto(`${GATEWAY_URL}${page}`, { waitUntil: 'load' })
    assert.equal(res?.status(), 200)
    await tab.waitForSelector(ready, { timeout: 20_000 })
    // Let the UI finish laying out the operations before reading and shooting.
    // (A string, evaluated in the page: this file is type-checked without the DOM library.)
    await tab.waitForFunction(
      `document.body.innerText.includes('/gateway/v1/chat/completions')`,
      undefined,
      { timeout: 20_000 },
    )
    await Deno.mkdir(SHOTS, { recursive: true })
    const shot = new URL(`${page.slice(1)}.png`, SHOTS)
    const png = await tab.screenshot({ path: shot.pathname, fullPage: false })
    const text = await tab.innerText('body')
    return { text, png, blocked, errors }
  } finally {
    await browser.close()
  }
}

test('Swagger UI at /docs renders the endpoint list with no network (screenshot)', async () => {
  if (!hasChromium) return console.warn(`skipped: no Chromium at ${CHROMIUM}`)
  const { text, png, blocked, errors } = await render('/docs', '.opblock')
  for (const e of ENDPOINTS) assert.ok(text.includes(e), `${e} is not on the page`)
  assert.ok(text.includes('OpenRouter gateway'))
  assert.deepEqual(blocked, [], 'the page asked for something outside the gateway')
  assert.deepEqual(errors, [])
  assert.ok(png.length > 20_000, 'the screenshot is not blank')
})

test('ReDoc at /redoc renders the endpoint list with no network (screenshot)', async () => {
  if (!hasChromium) return console.warn(`skipped: no Chromium at ${CHROMIUM}`)
  const { text, png, blocked, errors } = await render('/redoc', '[role=menuitem], .menu-content')
  for (const e of ENDPOINTS) assert.ok(text.includes(e), `${e} is not on the page`)
  assert.deepEqual(blocked, [], 'the page asked for something outside the gateway')
  assert.deepEqual(errors, [])
  assert.ok(png.length > 20_000, 'the screenshot is not blank')
})
