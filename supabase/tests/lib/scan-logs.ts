// Scans function logs for what must never be in them: a full gateway key, the upstream (OpenRouter)
// key, a bearer credential, a prompt. Prints each offending line with the secret masked and exits 1
// when there is any.
//
//   deno run -A supabase/tests/lib/scan-logs.ts [FILE…] [--secret TEXT]…
//
// FILE defaults to .local/functions.log. `--secret TEXT` adds a string that must not appear (a
// test's prompt, say). The upstream key is taken from OPENROUTER_API_KEY when set (the local
// stack's simulated one, `simulated-upstream-key`, is always checked). Prompts are recognised in JSON
// log lines by their fields (`messages`, `content`, `prompt`): the gateway never logs those.

export interface Finding {
  /** 1-based line number. */
  line: number
  what: string
  /** The line with every secret masked. */
  masked: string
}

const KEY = /gw_(?:live|test|staging|dev)_[0-9A-Za-z]{28}/g
const OPENROUTER_KEY = /sk-or-(?:v\d+-)?[0-9A-Za-z]{16,}/g
const BEARER = /\bBearer\s+[^\s"',}]{8,}/gi
const PROMPT_FIELDS = ['messages', 'content', 'prompt']

/** `abc…` + how long it was: enough to find the secret, not to use it. */
function mask(secret: string): string {
  return `${secret.slice(0, Math.min(8, Math.floor(secret.length / 3)))}…[masked ${secret.length}]`
}

/** The line with the values of prompt fields masked, or null when it has none. */
function maskPromptFields(line: string): string | null {
  if (!line.startsWith('{')) return null
  let doc: unknown
  try {
    doc = JSON.parse(line)
  } catch {
    return null
  }
  let found = false
  const walk = (v: unknown, depth: number): unknown => {
    if (depth > 8 || v === null || typeof v !== 'object') return v
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1))
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => {
        if (!PROMPT_FIELDS.includes(k)) return [k, walk(x, depth + 1)]
        found = true
        return [k, '[masked]']
      }),
    )
  }
  const masked = JSON.stringify(walk(doc, 0))
  return found ? masked : null
}

export interface ScanOptions {
  /** Exact strings that must not appear (prompts of a test, an upstream key). */
  secrets?: string[]
}

export function scanLog(text: string, opts: ScanOptions = {}): Finding[] {
  const secrets = [
    'simulated-upstream-key',
    ...(Deno.env.get('OPENROUTER_API_KEY') ? [Deno.env.get('OPENROUTER_API_KEY')!] : []),
    ...(opts.secrets ?? []),
  ].filter((s) => s.length >= 6)
  const findings: Finding[] = []
  text.split('\n').forEach((raw, i) => {
    const what: string[] = []
    let masked = raw
    for (
      const [name, re] of [
        // The bearer first: its mask swallows whatever credential it carried.
        ['a bearer credential', BEARER],
        ['a gateway key', KEY],
        ['an OpenRouter key', OPENROUTER_KEY],
      ] as const
    ) {
      if (raw.match(re)) {
        what.push(name)
        masked = masked.replace(re, (m) => mask(m))
      }
    }
    for (const s of secrets) {
      if (raw.includes(s)) {
        what.push(s === 'simulated-upstream-key' ? 'the upstream key' : 'a secret')
        masked = masked.replaceAll(s, mask(s))
      }
    }
    const prompt = maskPromptFields(masked)
    if (prompt !== null) {
      what.push('a prompt field')
      masked = prompt
    }
    if (what.length) findings.push({ line: i + 1, what: [...new Set(what)].join(', '), masked })
  })
  return findings
}

if (import.meta.main) {
  const files: string[] = []
  const secrets: string[] = []
  for (let i = 0; i < Deno.args.length; i++) {
    if (Deno.args[i] === '--secret') secrets.push(Deno.args[++i] ?? '')
    else files.push(Deno.args[i])
  }
  if (!files.length) files.push(new URL('../../../.local/functions.log', import.meta.url).pathname)
  let total = 0
  let lines = 0
  for (const file of files) {
    const text = await Deno.readTextFile(file)
    lines += text.split('\n').length
    for (const f of scanLog(text, { secrets })) {
      total++
      console.log(`${file}:${f.line}: ${f.what}: ${f.masked.slice(0, 400)}`)
    }
  }
  console.log(`${lines} log lines scanned in ${files.length} file(s): ${total} offending`)
  Deno.exit(total ? 1 : 0)
}
