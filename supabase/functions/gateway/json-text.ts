// What a JSON text holds, read from the text itself without parsing it: its outermost members with
// where they are (the upstream body is copied from them), whether any object names a member twice
// and what its numbers grow by when printed again (the prompt bound), and how many objects and
// arrays JSON.parse would build (the memory a body costs). One pass each; strings are jumped over.
// Only for text JSON.parse accepts (containersIn: any text).

export interface Member {
  /** The member's name, decoded. */
  name: string
  /** Where `"name": value` starts and ends in the text. */
  start: number
  end: number
}

/**
 * The members of a JSON object's text, in order, duplicates included. Only for text JSON.parse has
 * accepted as an object (so no error handling): strings are skipped by jumping to the next quote,
 * nested values by counting brackets outside strings.
 */
export function topLevelMembers(text: string): Member[] {
  const members: Member[] = []
  let i = skipSpace(text, text.indexOf('{') + 1)
  while (text.charCodeAt(i) === QUOTE) {
    const start = i
    const nameEnd = stringEnd(text, i)
    const name = JSON.parse(text.slice(i, nameEnd)) as string
    i = skipSpace(text, skipSpace(text, nameEnd) + 1) // past the colon
    i = valueEnd(text, i)
    if (i <= start) break // no progress: not JSON (never for text JSON.parse accepted)
    members.push({ name, start, end: i })
    i = skipSpace(text, i)
    if (text.charCodeAt(i) === COMMA) i = skipSpace(text, i + 1)
  }
  return members
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const COLON = 0x3a
const MINUS = 0x2d
const DIGIT_0 = 0x30
const DIGIT_9 = 0x39

export interface Names {
  /** Some object names a member twice. */
  repeated: boolean
  /** Members of the outermost object. */
  topLevel: number
  /**
   * Bytes the numbers written with an exponent gain when printed again from their values (as
   * JSON.stringify prints them: `1e20` is 100000000000000000000); 0 once `repeated` is known.
   */
  longer: number
}

/**
 * Whether some object of a JSON text has a member name twice (compared as decoded), how many
 * members its outermost object has, and how much longer its numbers print again. One pass: strings
 * are jumped over (most of a chat body's bytes), and a string directly followed by a colon is a name
 * of the innermost open object. Only for text JSON.parse has accepted.
 */
export function namesOf(text: string): Names {
  // The names seen in each open object; null for an open array.
  const open: (Set<string> | null)[] = []
  let topLevel = 0
  let longer = 0
  for (let i = 0; i < text.length;) {
    const c = text.charCodeAt(i)
    if (c === MINUS || (c >= DIGIT_0 && c <= DIGIT_9)) {
      // A number (outside strings, only numbers have digits or a minus). Only an exponent makes
      // one print longer: without one, the shortest digits that read back alike are never more.
      let j = i + 1
      let exponent = false
      for (let d = text.charCodeAt(j); isNumberChar(d); d = text.charCodeAt(++j)) {
        if (d === 0x65 || d === 0x45) exponent = true
      }
      if (exponent) {
        const written = text.slice(i, j)
        longer += Math.max(0, (JSON.stringify(Number(written)) ?? '').length - written.length)
      }
      i = j
      continue
    }
    if (c === QUOTE) {
      const end = stringEnd(text, i)
      const names = open[open.length - 1]
      const after = names ? skipSpace(text, end) : end
      if (names && text.charCodeAt(after) === COLON) {
        const raw = text.slice(i + 1, end - 1)
        const name = raw.includes('\\') ? JSON.parse(text.slice(i, end)) as string : raw
        if (names.has(name)) return { repeated: true, topLevel, longer: 0 }
        names.add(name)
        if (open.length === 1) topLevel++
        i = after + 1
      } else i = end
      continue
    }
    if (c === 0x7b) open.push(new Set())
    else if (c === 0x5b) open.push(null)
    else if (c === 0x7d || c === 0x5d) open.pop()
    i++
  }
  return { repeated: false, topLevel, longer }
}

/** Digits, sign, point and exponent: the characters of a JSON number. */
function isNumberChar(c: number): boolean {
  return (c >= DIGIT_0 && c <= DIGIT_9) || c === MINUS || c === 0x2b || c === 0x2e || c === 0x65 ||
    c === 0x45
}

/**
 * The most objects and arrays a chat body may hold. Parsed, `{}` (2 bytes) is a V8 object of some
 * 140: 1.3 million of them in a 3.9 MB body grew a worker by ~180 MiB, past its 256, and the
 * runtime killed it with every request in flight there. This many cost at most ~30 MB; a real body
 * holds a few per message (a 100,000-deep schema is accepted).
 */
export const MAX_CONTAINERS = 200_000

/**
 * How many objects and arrays a text holds (outside strings), counted up to MAX_CONTAINERS + 1:
 * before JSON.parse, which is what costs the memory. Any text; strings are jumped over.
 */
export function containersIn(text: string): number {
  let n = 0
  for (let i = 0; i < text.length;) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      i = stringEnd(text, i)
      continue
    }
    if ((c === 0x7b || c === 0x5b) && ++n > MAX_CONTAINERS) return n
    i++
  }
  return n
}

function skipSpace(text: string, i: number): number {
  for (let c = text.charCodeAt(i); c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;) {
    c = text.charCodeAt(++i)
  }
  return i
}

/** `i` at a string's opening quote: the index just past its closing quote. */
function stringEnd(text: string, i: number): number {
  for (let from = i + 1;;) {
    const q = text.indexOf('"', from)
    if (q < 0) return text.length // (not JSON: never for text JSON.parse accepted)
    let backslashes = 0
    while (text.charCodeAt(q - 1 - backslashes) === BACKSLASH) backslashes++
    if (backslashes % 2 === 0) return q + 1
    from = q + 1
  }
}

/** `i` at a value's first character: the index just past the value. */
function valueEnd(text: string, i: number): number {
  const first = text.charCodeAt(i)
  if (first === QUOTE) return stringEnd(text, i)
  if (first !== 0x7b && first !== 0x5b) {
    // A number, true, false or null: up to the next delimiter.
    while (i < text.length) {
      const c = text.charCodeAt(i)
      if (c === COMMA || c === 0x7d || c === 0x5d || c <= 0x20) break
      i++
    }
    return i
  }
  let depth = 0
  while (i < text.length) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      i = stringEnd(text, i)
      continue
    }
    if (c === 0x7b || c === 0x5b) depth++
    else if ((c === 0x7d || c === 0x5d) && --depth === 0) return i + 1
    i++
  }
  return i
}
