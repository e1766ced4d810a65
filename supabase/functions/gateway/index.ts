// Entry point of the gateway edge function. Supabase's runtime hands us requests whose path starts
// with the function's name, hence the base path.
import { Hono } from 'hono'

const app = new Hono().basePath('/gateway')
app.get('/health', (c) => c.json({ status: 'ok' }))

Deno.serve(app.fetch)
