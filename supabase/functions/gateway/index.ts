// Entry point of the gateway edge function. Supabase's runtime hands us requests whose path starts
// with the function's name (hence the app's base path, see app.ts); everything else is in app.ts.
import { buildApp } from './app.ts'

const app = buildApp()

Deno.serve(app.fetch)
