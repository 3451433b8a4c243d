// Elysia on Bun, relaying the way its docs write a handler: the parsed body in, the upstream's
// body (a stream when asked for one) handed straight back as a Response.
//
//   UPSTREAM_URL=http://127.0.0.1:9100 PORT=8080 bun run elysia.ts
import { Elysia } from 'elysia'

const UPSTREAM = (process.env.UPSTREAM_URL ?? 'http://127.0.0.1:9100').replace(/\/+$/, '')
const API_KEY = process.env.UPSTREAM_API_KEY ?? 'x'
const PORT = Number(process.env.PORT ?? 8080)
const HOST = process.env.HOST ?? '127.0.0.1'

new Elysia()
  .get('/health', () => ({ status: 'ok' }))
  .post('/v1/chat/completions', async ({ body }: { body: any }) => {
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
    return new Response(await res.text(), {
      status: res.status,
      headers: { 'content-type': 'application/json' },
    })
  })
  .listen({ port: PORT, hostname: HOST })
