// The shared stack's OpenRouter simulator (tools/openrouter-sim at SIM_URL), as tests read and steer
// it: what it generated, what it received, its configuration.

import { SIM_URL } from './stack.ts'

export interface SimGeneration {
  id: string
  model: string
  stream: boolean
  prompt_tokens: number
  completion_tokens: number
  cancelled: boolean
  fault: string | null
  ended: boolean
  /** How long the simulator held the response headers back (the `slow` fault), ms. */
  held_ms: number
  /** The exact usage.cost it charged, USD as a decimal string (null until it ended). */
  cost: string | null
}

/** A simulator's GET /__sim/stats document, as far as the books read it (books.ts). */
export interface SimStats {
  generations?: SimGeneration[]
  generations_dropped?: number
  [field: string]: unknown
}

// deno-lint-ignore no-explicit-any
export async function simStats(summary = false): Promise<any> {
  const res = await fetch(`${SIM_URL}/__sim/stats${summary ? '?summary=1' : ''}`)
  return await res.json()
}

export async function simGeneration(id: string): Promise<SimGeneration> {
  const stats = await simStats()
  const g = (stats.generations as SimGeneration[]).find((x) => x.id === id)
  if (!g) throw new Error(`the simulator has no generation ${id}`)
  return g
}

/** Number of chat requests the simulator has received. */
export async function simChatCount(): Promise<number> {
  return (await simStats(true)).requests.chat
}

/** The last chat request the simulator received (body and recorded headers). */
// deno-lint-ignore no-explicit-any
export async function simLastReceived(): Promise<{ body: any; headers: Record<string, string> }> {
  const received = (await simStats()).received
  return received[received.length - 1]
}

/** Reads the simulator's config, or patches it (returning the config after the patch). */
export async function simConfig(patch?: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await fetch(`${SIM_URL}/__sim/config`, {
    method: patch ? 'POST' : 'GET',
    headers: { 'content-type': 'application/json' },
    body: patch ? JSON.stringify(patch) : undefined,
  })
  return await res.json()
}
