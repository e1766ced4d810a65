// Counts test results from the machine-readable reports the test runners write, for
// scripts/test.sh: Deno's JUnit XML (`deno test --junit-path`) and the TAP that pg_prove passes on
// (`pg_prove --verbose`: each test file's own TAP stream, between pg_prove's lines about the file).
//
//   deno run --allow-read scripts/results.ts junit FILE
//   deno run --allow-read scripts/results.ts tap FILE
//
// Prints `PASSED FAILED` on the first line, then one line per failure. A Deno test's steps are not
// counted apart from their test (as `deno test` counts); ignored tests count as neither. In TAP, a
// `not ok … # TODO` passes; a file whose plan is not met counts each missing test as failed (a
// file that crashed before its plan, as one).

const [format, file] = Deno.args
if (!file || (format !== 'junit' && format !== 'tap')) {
  console.error('usage: deno run --allow-read scripts/results.ts junit|tap FILE')
  Deno.exit(2)
}
const text = await Deno.readTextFile(file).catch(() => '')

interface Counts {
  passed: number
  failed: number
  failures: string[]
}

const XML_ENTITIES: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
}
const unescape = (s: string) => s.replace(/&(amp|lt|gt|quot|apos);/g, (_, e) => XML_ENTITIES[e])

/** Deno's JUnit report: one <testcase> per test and per step (named `test > step`). */
function junit(xml: string): Counts {
  const counts: Counts = { passed: 0, failed: 0, failures: [] }
  for (
    const suite of xml.matchAll(/<testsuite\b[^>]*\bname="([^"]*)"[^>]*>([\s\S]*?)<\/testsuite>/g)
  ) {
    const cases = [
      ...suite[2].matchAll(/<testcase\b[^>]*\bname="([^"]*)"[^>]*>([\s\S]*?)<\/testcase>/g),
    ]
      .map((m) => ({
        name: unescape(m[1]),
        failed: /<(failure|error)\b/.test(m[2]),
        why: /<(?:failure|error)\b[^>]*\bmessage="([^"]*)"/.exec(m[2])?.[1],
        skipped: /<skipped\b/.test(m[2]),
      }))
    const names = new Set(cases.map((c) => c.name))
    for (const c of cases) {
      const cut = c.name.lastIndexOf(' > ')
      if (cut > 0 && names.has(c.name.slice(0, cut))) continue // a step: its test counts it
      if (c.skipped) continue
      if (c.failed) {
        counts.failed++
        // The reason rides along (first 600 characters, one line): a CI log keeps only its tail,
        // and the summary is the tail.
        const why = c.why ? ` — ${unescape(c.why).replace(/\s+/g, ' ').slice(0, 600)}` : ''
        counts.failures.push(`${unescape(suite[1])}: ${c.name}${why}`)
      } else counts.passed++
    }
  }
  return counts
}

/** pg_prove's verbose output: `<file> .. ` starts a file; its TAP follows. */
function tap(out: string): Counts {
  const counts: Counts = { passed: 0, failed: 0, failures: [] }
  let current: { name: string; plan: number | null; seen: number } | null = null
  const close = () => {
    if (!current) return
    const missing = current.plan === null
      ? (current.seen === 0 ? 1 : 0)
      : Math.max(0, current.plan - current.seen)
    if (missing) {
      counts.failed += missing
      counts.failures.push(
        `${current.name}: ${current.plan === null ? 'no plan' : `planned ${current.plan}`}, ` +
          `${current.seen} ran`,
      )
    }
    current = null
  }
  for (const line of out.split('\n')) {
    const file = /^(\S+\.sql) \.+ ?/.exec(line)
    if (file) {
      close()
      current = { name: file[1], plan: null, seen: 0 }
      continue
    }
    if (!current) continue
    const plan = /^1\.\.(\d+)/.exec(line)
    if (plan) {
      current.plan = Number(plan[1])
      continue
    }
    const result = /^(not )?ok \d+\b(.*)$/.exec(line)
    if (!result) continue
    current.seen++
    if (!result[1] || /#\s*TODO\b/i.test(result[2])) counts.passed++
    else {
      counts.failed++
      counts.failures.push(`${current.name}: ${line}`)
    }
  }
  close()
  return counts
}

const counts = format === 'junit' ? junit(text) : tap(text)
console.log(`${counts.passed} ${counts.failed}`)
for (const f of counts.failures) console.log(f)
