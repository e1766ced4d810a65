// Preloaded into the plain function process (`bench/run.sh --plain --profile`) only: SIGTERM ends it
// with Deno.exit, so that `--cpu-prof` writes its profile (a process killed by the signal writes
// none). Nothing else: requests go straight to the function's own Deno.serve.
Deno.addSignalListener('SIGTERM', () => Deno.exit(0))
