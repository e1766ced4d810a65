// Summarises a V8 CPU profile (what `deno run --cpu-prof` writes): self time per function and per
// source (our files, each npm package, Deno's runtime), excluding idle time, so the hot spots of the
// gateway under load read as a short list. Also a command:
//
//   deno run --allow-read bench/probes/cpuprofile.ts <file.cpuprofile> [top N]

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
}
interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}
export interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

export interface HotSpot {
  name: string
  self_ms: number
  percent: number
}

/** Where a frame's code comes from: a gateway file, an npm package, Deno's runtime, V8. */
export function source(url: string): string {
  if (!url) return '(native/V8)'
  const npm = /\/npm\/registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
  if (npm) return `npm:${npm[1]}`
  if (url.startsWith('ext:') || url.startsWith('node:')) {
    return `deno runtime (${url.split('/')[0]})`
  }
  const local = /\/(supabase\/functions\/.*|scripts\/.*|tools\/.*)$/.exec(url)
  return local ? local[1] : url
}

export interface Summary {
  busy_ms: number
  /** Self time per source file or package. */
  sources: HotSpot[]
  /** Self time per function. */
  functions: HotSpot[]
  /** Inclusive time (with callees) of functions in our own code: what each step costs. */
  ours: HotSpot[]
}

const OURS = /^(supabase|scripts)\//

export function summarise(profile: CpuProfile, top = 20): { top: Summary; text: string } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const selfUs = new Map<number, number>()
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  }
  const functions = new Map<string, number>()
  const sources = new Map<string, number>()
  const inclusive = new Map<string, number>()
  let busy = 0
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)!.callFrame
    if (frame.functionName === '(idle)') continue
    busy += us
    const file = source(frame.url)
    const name = `${frame.functionName || '(anonymous)'} ${file}${
      frame.url ? `:${frame.lineNumber + 1}` : ''
    }`
    functions.set(name, (functions.get(name) ?? 0) + us)
    sources.set(file, (sources.get(file) ?? 0) + us)
    // Inclusive: each of our functions on this stack, once (recursion is not double counted).
    const seen = new Set<string>()
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      const f = byId.get(n)!.callFrame
      const src = source(f.url)
      if (!OURS.test(src)) continue
      const key = `${f.functionName || '(anonymous)'} ${src}:${f.lineNumber + 1}`
      if (!seen.has(key)) inclusive.set(key, (inclusive.get(key) ?? 0) + us)
      seen.add(key)
    }
  }
  const rank = (m: Map<string, number>) =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, us]) => ({
      name,
      self_ms: Math.round(us / 100) / 10,
      percent: Math.round((us / Math.max(1, busy)) * 1000) / 10,
    }))
  const result: Summary = {
    busy_ms: Math.round(busy / 1000),
    sources: rank(sources),
    functions: rank(functions),
    ours: rank(inclusive),
  }
  const lines = (list: HotSpot[]) =>
    list.map((h) =>
      `  ${h.percent.toFixed(1).padStart(5)}%  ${h.self_ms.toFixed(0).padStart(7)} ms  ${h.name}`
    )
  const text = [
    `busy ${Math.round(busy / 1000)} ms (idle excluded)`,
    'by source:',
    ...lines(result.sources),
    'by function:',
    ...lines(result.functions),
    'our code, inclusive of what it calls:',
    ...lines(result.ours),
  ].join('\n')
  return { top: result, text }
}

if (import.meta.main) {
  const [file, n] = Deno.args
  if (!file) {
    console.error(
      'usage: deno run --allow-read bench/probes/cpuprofile.ts <file.cpuprofile> [top N]',
    )
    Deno.exit(2)
  }
  console.log(summarise(JSON.parse(await Deno.readTextFile(file)), Number(n ?? 25)).text)
}
