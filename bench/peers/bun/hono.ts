// Hono on Bun, relaying the way the tutorials write it: parse the JSON body, forward it to an
// OpenAI-compatible upstream with fetch, and hand the upstream's body straight back.
//
//   UPSTREAM_URL=http://127.0.0.1:9100 PORT=8080 bun run hono.ts
import { Hono } from 'hono'

const UPSTREAM = (process.env.UPSTREAM_URL ?? 'http://127.0.0.1:9100').replace(/\/+$/, '')
const API_KEY = process.env.UPSTREAM_API_KEY ?? 'x'
const PORT = Number(process.env.PORT ?? 8080)
const HOST = process.env.HOST ?? '127.0.0.1'

const app = new Hono()

app.get('/health', (c) => c.json({ status: 'ok' }))

app.post('/v1/chat/completions', async (c) => {
  const body = await c.req.json()
  const res = await fetch(`${UPSTREAM}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify(body),
  })
  if (body.stream) {
    return new Response(res.body, {
      status: res.status,
      headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
    })
  }
  return c.json(await res.json(), res.status as any)
})

// Bun serves the default export: its own HTTP server, one process
export default { port: PORT, hostname: HOST, fetch: app.fetch }
