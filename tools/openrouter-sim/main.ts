// Entry point: deno run --allow-net --allow-env tools/openrouter-sim/main.ts
// Settings come from the environment (see README.md); nothing is logged per request.

import { startSimulator } from './server.ts'

function intEnv(name: string): number | undefined {
  const raw = Deno.env.get(name)
  if (raw === undefined || raw === '') return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be an integer >= 0, got ${raw}`)
  return n
}

const sim = await startSimulator({
  hostname: Deno.env.get('SIM_HOST') || '127.0.0.1',
  port: intEnv('SIM_PORT') ?? 54340,
  apiKey: Deno.env.get('SIM_API_KEY') || undefined,
  completionTokens: intEnv('SIM_COMPLETION_TOKENS'),
  reasoningTokens: intEnv('SIM_REASONING_TOKENS'),
  generationDelayMs: intEnv('SIM_GENERATION_DELAY_MS'),
  modelsFault: intEnv('SIM_MODELS_FAULT') || null,
  maxGenerations: intEnv('SIM_MAX_GENERATIONS'),
})
console.log(`openrouter-sim listening on ${sim.url}`)
