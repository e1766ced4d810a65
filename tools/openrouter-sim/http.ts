// Response and timing helpers shared by the simulator's routes.

const JSON_HEADERS = { 'content-type': 'application/json' }

export function json(status: number, body: unknown, headers?: Record<string, string>): Response {
  return new Response(typeof body === 'string' ? body : JSON.stringify(body), {
    status,
    headers: headers ? { ...JSON_HEADERS, ...headers } : JSON_HEADERS,
  })
}

/** OpenRouter's error shape; the HTTP status always equals error.code. */
export function openRouterError(
  code: number,
  message: string,
  headers?: Record<string, string>,
): Response {
  return json(code, { error: { code, message } }, headers)
}

/** Resolves after `ms`, or as soon as `signal` aborts (callers check `signal.aborted`). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const onAbort = () => {
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * Errors a response body with this to drop the connection mid-body (the `stream-cut`
 * fault); startSimulator's onError recognises it and stays quiet.
 */
export class StreamCut extends Error {
  constructor() {
    super('openrouter-sim: stream-cut fault')
  }
}
