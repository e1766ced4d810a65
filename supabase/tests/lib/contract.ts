// Holds real answers against the OpenAPI document the gateway publishes (/openapi.json): each JSON
// body is validated (Ajv, JSON Schema 2020-12, as OpenAPI 3.1 uses) against the schema the document
// publishes for its route and status. Beyond that schema, a member the document does not name is a
// mismatch too (the document would be incomplete), and so is a status it does not list.

import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import formats from 'ajv-formats'
import { api, type ApiOptions, type ApiResponse } from './http.ts'
import { GATEWAY_URL } from './stack.ts'

// deno-lint-ignore no-explicit-any
type Json = any

const BASE = new URL(GATEWAY_URL).pathname // /functions/v1/gateway
const PREFIX = BASE.slice(BASE.lastIndexOf('/')) // /gateway: where the document's paths start

/** The operations of the document that no 2xx answer was checked for. */
export function missed(c: Contract): string[] {
  return c.operations.map((o) => `${o.method} ${o.path}`).filter((o) => !c.covered.has(o))
}

/** A copy of `schema` in which an object with named properties admits no other member. */
function closed(schema: Json): Json {
  if (Array.isArray(schema)) return schema.map(closed)
  if (schema === null || typeof schema !== 'object') return schema
  const out: Json = {}
  for (const [k, v] of Object.entries(schema)) {
    // `properties` maps names to schemas: close the schemas, not the map.
    out[k] = k === 'properties'
      ? Object.fromEntries(Object.entries(v as Json).map(([n, s]) => [n, closed(s)]))
      : closed(v)
  }
  if (
    schema.properties && schema.additionalProperties === undefined &&
    schema.unevaluatedProperties === undefined
  ) {
    out.unevaluatedProperties = false
  }
  return out
}

interface Operation {
  method: string
  /** The document's path, e.g. /gateway/user/api-keys/{key_id}. */
  path: string
  responses: Record<string, Json>
}

export class Contract {
  readonly ajv = new Ajv2020({ strict: false, allErrors: true })
  readonly operations: Operation[] = []
  readonly #problems = new Set<string>()
  /** `METHOD path` of the operations whose 2xx answer was validated. */
  readonly covered = new Set<string>()
  readonly checked: string[] = []
  readonly #validators = new Map<
    string,
    { published: ValidateFunction; closed: ValidateFunction }
  >()

  /** `doc`: the published document; `send`: how a request reaches the gateway (the stack's, by default). */
  constructor(
    readonly doc: Json,
    readonly send: (path: string, opts: ApiOptions) => Promise<ApiResponse> = api,
  ) {
    // (ajv-formats is CommonJS: its plugin is the module's `default`.)
    formats.default(this.ajv)
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Json>)) {
      for (const [method, op] of Object.entries(ops as Record<string, Json>)) {
        this.operations.push({ method: method.toUpperCase(), path, responses: op.responses })
      }
    }
  }

  /** Each problem once, array positions folded (`/data/7/id` as `/data/[n]/id`). */
  #problem(text: string): void {
    this.#problems.add(text.replace(/\/\d+(?=\/| )/g, '/[n]'))
  }

  get problems(): string[] {
    return [...this.#problems]
  }

  #validator(op: Operation, status: string) {
    const key = `${op.method} ${op.path} ${status}`
    let v = this.#validators.get(key)
    if (!v) {
      const schema = op.responses[status]?.content?.['application/json']?.schema
      if (!schema) return undefined
      // The schema with the document's components beside it, so its $refs resolve.
      const wrapped = { ...schema, components: this.doc.components }
      v = {
        published: this.ajv.compile(wrapped),
        closed: this.ajv.compile({ ...closed(schema), components: closed(this.doc.components) }),
      }
      this.#validators.set(key, v)
    }
    return v
  }

  /** Calls `method path` (a document path with its parameters filled in) and checks the answer. */
  async call(method: string, path: string, opts: ApiOptions = {}): Promise<ApiResponse> {
    const res = await this.send(path, { ...opts, method })
    const op = this.operations.find((o) =>
      o.method === method &&
      new RegExp(`^${o.path.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(
        PREFIX + path.replace(/\?.*$/, ''),
      )
    )
    const where = `${method} ${path} → ${res.status}`
    if (!op) {
      this.#problem(`${where}: the document has no such operation`)
      return res
    }
    const status = String(res.status)
    if (!op.responses[status]) {
      this.#problem(`${where}: status not in the document (${Object.keys(op.responses)})`)
      return res
    }
    const v = this.#validator(op, status)
    if (!v) {
      this.#problem(`${where}: the document publishes no JSON schema for it`)
      return res
    }
    if (res.json === undefined) {
      this.#problem(`${where}: not JSON: ${res.text.slice(0, 80)}`)
      return res
    }
    if (!v.published(res.json)) {
      for (const e of v.published.errors ?? []) {
        this.#problem(`${where}: ${e.instancePath || '(body)'} ${e.message}`)
      }
    } else if (!v.closed(res.json)) {
      for (const e of v.closed.errors ?? []) {
        const extra = (e.params as { unevaluatedProperty?: string }).unevaluatedProperty
        this.#problem(
          `${where}: ${e.instancePath || '(body)'} ${
            extra ? `has "${extra}", which the document does not name` : e.message
          }`,
        )
      }
    }
    if (res.status < 300) this.covered.add(`${op.method} ${op.path}`)
    this.checked.push(where)
    return res
  }
}
