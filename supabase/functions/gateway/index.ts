// Entry point of the gateway edge function. Supabase's runtime hands us requests whose path starts
// with the function's name (hence the app's base path, see app.ts); everything else is in app.ts.
import { buildApp } from './app.ts'
import { checkRole } from './db.ts'

const app = buildApp()
// Who the function is in Postgres, asked before the first request needs to know (app.ts refuses
// to serve as a privileged role).
checkRole()

Deno.serve(app.fetch)
