// Browser test page for the rendezvous server: js-libp2p 2.x over ws:// plus the
// @canvas-js/libp2p-rendezvous client speaking /rendezvous/1.0.0.
//
// Parameters (location.hash or location.search, hash wins):
//   addr    server multiaddr, e.g. /ip4/127.0.0.1/tcp/PORT/ws/p2p/12D3KooW...   (required)
//   ns      namespace to register in and discover                              (default "test")
//   report  URL that receives the JSON result as a text/plain POST             (required)
//   ttl     registration TTL in seconds (optional; omitted = 0 on the wire = server default)
//   proto   protocol id (optional; default /rendezvous/1.0.0)
//   timeout overall budget in ms (optional; default 15000)
//   close   "0" keeps the tab open afterwards (default: window.close(), so headless Chromium exits)
//
// Then it pings the point three times as js-libp2p's connection monitor does (a stream
// each: 32 random bytes out, the same 32 back, close).
//
// It always POSTs exactly one report, sets document.title to "done" or "error", stops
// the libp2p node and closes the window.
import { createLibp2p } from 'libp2p'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import { RendezvousClient, rendezvousClient } from '@canvas-js/libp2p-rendezvous/client'

const t0 = Date.now()
const params = new URLSearchParams(location.search)
for (const [k, v] of new URLSearchParams(location.hash.replace(/^#/, ''))) params.set(k, v)

const addr = params.get('addr')
const ns = params.get('ns') ?? 'test'
const reportUrl = params.get('report')
const ttl = params.has('ttl') ? Number(params.get('ttl')) : undefined
const proto = params.get('proto') ?? '/rendezvous/1.0.0'
const budget = Number(params.get('timeout') ?? 15000)
const deadline = t0 + budget
let node = null

const result = {
  self: null,
  registered: false,
  ttl: null,
  found: [],
  self_in_discover: false, // the canvas client drops our own registration from `found`
  pings: 0, // pings the point echoed byte for byte
  error: null,
  stage: 'init',
  ns,
  protocol: proto,
  elapsed_ms: 0
}

let reported = false
async function finish (err) {
  if (reported) return
  reported = true
  if (err != null) result.error = `${result.stage}: ${err?.message ?? err}`
  result.elapsed_ms = Date.now() - t0
  const body = JSON.stringify(result)
  const pre = document.getElementById('result')
  if (pre != null) pre.textContent = body
  if (reportUrl != null) {
    try {
      await fetch(reportUrl, {
        method: 'POST',
        mode: 'no-cors',
        headers: { 'content-type': 'text/plain' },
        body,
        signal: AbortSignal.timeout(5000)
      })
    } catch (e) {
      console.error('report POST failed', e)
    }
  }
  document.title = result.error == null ? 'done' : 'error'
  if (node != null) {
    await Promise.race([node.stop().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 2000))])
  }
  if (params.get('close') !== '0') window.close()
}

// One ping on a stream of its own, as js-libp2p's connection monitor sends it: true if
// the same 32 bytes came back.
async function ping (conn) {
  const signal = AbortSignal.timeout(Math.max(1, deadline - Date.now()))
  const stream = await conn.newStream('/ipfs/ping/1.0.0', { signal })
  const sent = crypto.getRandomValues(new Uint8Array(32))
  const writing = stream.sink([sent])
  const back = []
  let length = 0
  for await (const chunk of stream.source) {
    back.push(...chunk.subarray())
    length += chunk.byteLength
    if (length >= sent.length) break
  }
  await writing
  await stream.close({ signal })
  return back.length === sent.length && back.every((b, i) => b === sent[i])
}

// Rejects when the overall deadline passes, so every stage is bounded.
function bounded (promise) {
  const ms = Math.max(0, deadline - Date.now())
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${budget} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

async function main () {
  if (addr == null) throw new Error('missing parameter addr')
  if (reportUrl == null) throw new Error('missing parameter report')
  const server = multiaddr(addr)

  // The canvas client reads this static property at call time; its default is
  // /canvas/rendezvous/1.0.0.
  RendezvousClient.protocol = proto

  result.stage = 'start'
  node = await bounded(createLibp2p({
    transports: [webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // The browser gater refuses private/loopback addresses; allow ws://127.0.0.1.
    connectionGater: { denyDialMultiaddr: async () => false },
    services: {
      identify: identify(),
      rendezvous: rendezvousClient({ autoDiscover: false })
    }
  }))
  await bounded(node.start())
  result.self = node.peerId.toString()

  // Learn whether the server returned our own registration (the client skips it).
  const svc = node.services.rendezvous
  const log = svc.log
  svc.log = Object.assign((fmt, ...args) => {
    if (fmt === 'discovered self') result.self_in_discover = true
    return log(fmt, ...args)
  }, log)

  result.stage = 'dial'
  const signal = AbortSignal.timeout(Math.max(1, deadline - Date.now()))
  const conn = await bounded(node.dial(server, { signal }))

  result.stage = 'open-stream'
  await bounded(svc.connect(conn.remotePeer, async (point) => {
    // A browser node has no listen addresses, so give the peer record one.
    const own = multiaddr(`/ip4/127.0.0.1/tcp/1/ws/p2p/${result.self}`)
    result.stage = 'register'
    const reg = await point.register(ns, { ttl, multiaddrs: [own] })
    result.registered = true
    result.ttl = reg.ttl

    result.stage = 'discover'
    const peers = await point.discover(ns)
    result.found = peers.map((p) => p.id.toString())
  }))

  result.stage = 'ping'
  for (let i = 0; i < 3; i++) {
    if (await bounded(ping(conn))) result.pings++
  }
  result.stage = 'done'
}

// Last-resort watchdog in case something escapes the bounded() calls.
setTimeout(() => finish(new Error('watchdog fired')), budget + 3000)
main().then(() => finish(null), (err) => finish(err))
