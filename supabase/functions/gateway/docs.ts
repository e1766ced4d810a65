// The API documentation pages: Swagger UI at /docs and ReDoc at /redoc, both reading /openapi.json.
// Their scripts and styles are served by the function itself from assets/ (vendored, gzip), so the
// pages render with no internet access. Asset modules are imported on first use only: a request to
// the chat path never pays for parsing a megabyte of documentation UI.

import { Hono } from 'hono'
import type { AppEnv } from './routes/common.ts'

export const docsRoutes = new Hono<AppEnv>()

interface Asset {
  type: string
  size: number
  gzip: string
}
interface AssetModule {
  version: string
  files: Record<string, Asset>
}

const loaders: Record<string, () => Promise<AssetModule>> = {
  'swagger-ui': () => import('./assets/swagger-ui.ts'),
  redoc: () => import('./assets/redoc.ts'),
}
const decoded = new Map<string, Uint8Array<ArrayBuffer>>()

function gzipBytes(asset: Asset): Uint8Array<ArrayBuffer> {
  const binary = atob(asset.gzip)
  const bytes = new Uint8Array(new ArrayBuffer(binary.length))
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes
}

// Paths are relative (`docs/…`, `openapi.json`) so the pages work under whatever prefix the
// platform mounts the function at (/functions/v1/gateway/ on Supabase).
const swaggerPage = (v: string) =>
  `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OpenRouter gateway — API (Swagger UI)</title>
<link rel="stylesheet" href="docs/swagger-ui/${v}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui/${v}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: 'openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  validatorUrl: null,
  layout: 'BaseLayout',
})
</script>
</body>
</html>
`

const redocPage = (v: string) =>
  `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OpenRouter gateway — API (ReDoc)</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<div id="redoc"></div>
<script src="docs/redoc/${v}/redoc.standalone.js"></script>
<script>
Redoc.init('openapi.json', { hideDownloadButton: false, expandResponses: '200' }, document.getElementById('redoc'))
</script>
</body>
</html>
`

const HTML = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' }

docsRoutes.get('/docs', async () => {
  return new Response(swaggerPage((await loaders['swagger-ui']()).version), { headers: HTML })
})
docsRoutes.get('/redoc', async () => {
  return new Response(redocPage((await loaders.redoc()).version), { headers: HTML })
})

docsRoutes.get('/docs/:ui/:version/:file', async (c) => {
  const { ui, version, file } = c.req.param()
  const load = loaders[ui]
  if (!load) return c.notFound()
  const mod = await load()
  const asset = mod.version === version ? mod.files[file] : undefined
  if (!asset) return c.notFound()
  const key = `${ui}/${file}`
  let gz = decoded.get(key)
  if (!gz) {
    gz = gzipBytes(asset)
    decoded.set(key, gz)
  }
  const headers: Record<string, string> = {
    'content-type': asset.type,
    // The version is in the path, so a cached copy is never wrong.
    'cache-control': 'public, max-age=31536000, immutable',
    vary: 'accept-encoding',
  }
  if (/\bgzip\b/.test(c.req.header('accept-encoding') ?? '')) {
    return new Response(gz, { headers: { ...headers, 'content-encoding': 'gzip' } })
  }
  const plain = new Blob([gz]).stream().pipeThrough(new DecompressionStream('gzip'))
  return new Response(plain, { headers })
})
