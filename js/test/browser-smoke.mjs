#!/usr/bin/env node
// Opens a page in headless Chromium and waits for its #out element to leave "pending"; prints the text
// and exits 0 if it starts with PASS. Drives Chromium over the DevTools protocol with Node's own
// fetch and WebSocket (Node >= 22), no package. Used by tests/test_js_sdk.py with test/browser/.
//
//   node test/browser-smoke.mjs URL [--chromium PATH] [--timeout-ms 120000]

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { chromium: { type: 'string', default: 'chromium' }, 'timeout-ms': { type: 'string', default: '120000' } },
})
const [url] = positionals
if (!url) {
  process.stderr.write('usage: browser-smoke.mjs URL [--chromium PATH] [--timeout-ms MS]\n')
  process.exit(2)
}
const timeout = Number(values['timeout-ms'])
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'heserve-chromium-'))
const chrome = spawn(
  values.chromium,
  ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--remote-debugging-port=0', `--user-data-dir=${profile}`, 'about:blank'],
  { stdio: ['ignore', 'ignore', 'pipe'] }
)
/** @type {(value: string) => void} */
let gotEndpoint = () => {}
const endpoint = new Promise((resolve) => (gotEndpoint = resolve))
let stderr = ''
chrome.stderr.on('data', (chunk) => {
  stderr += chunk
  const match = /DevTools listening on (ws:\/\/\S+)/.exec(stderr)
  if (match) gotEndpoint(match[1])
})

const sleep = (/** @type {number} */ ms) => new Promise((resolve) => setTimeout(resolve, ms))
let code = 1
try {
  const browserUrl = await Promise.race([endpoint, sleep(30000).then(() => Promise.reject(new Error(`Chromium did not start:\n${stderr.slice(-2000)}`)))])
  const { port } = new URL(/** @type {string} */ (browserUrl))
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json()
  const page = targets.find((/** @type {any} */ t) => t.type === 'page')
  const ws = new WebSocket(page.webSocketDebuggerUrl)
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve)
    ws.addEventListener('error', reject)
  })
  let id = 0
  /** @type {Map<number, (message: any) => void>} */
  const waiting = new Map()
  /** @type {string[]} */
  const console_ = []
  ws.addEventListener('message', (event) => {
    const message = JSON.parse(String(event.data))
    if (message.id && waiting.has(message.id)) {
      /** @type {(message: any) => void} */ (waiting.get(message.id))(message)
      waiting.delete(message.id)
    } else if (message.method === 'Runtime.exceptionThrown') {
      console_.push(`exception: ${JSON.stringify(message.params.exceptionDetails).slice(0, 1000)}`)
    } else if (message.method === 'Runtime.consoleAPICalled') {
      console_.push(`console.${message.params.type}: ${message.params.args.map((/** @type {any} */ a) => a.value ?? a.description).join(' ')}`)
    }
  })
  const send = (/** @type {string} */ method, params = {}) =>
    new Promise((resolve) => {
      waiting.set(++id, resolve)
      ws.send(JSON.stringify({ id, method, params }))
    })
  await send('Runtime.enable')
  await send('Page.navigate', { url })
  const started = Date.now()
  let text = 'pending'
  while (Date.now() - started < timeout) {
    await sleep(250)
    const answer = /** @type {any} */ (await send('Runtime.evaluate', { expression: "document.getElementById('out')?.textContent ?? 'pending'" }))
    text = answer.result?.result?.value ?? 'pending'
    if (text !== 'pending') break
  }
  process.stdout.write(`${text}\n(${Date.now() - started} ms)\n`)
  if (console_.length) process.stdout.write(`${console_.join('\n')}\n`)
  code = text.startsWith('PASS') ? 0 : 1
  ws.close()
} catch (error) {
  process.stdout.write(`FAIL ${/** @type {Error} */ (error).message}\n`)
} finally {
  chrome.kill()
  await sleep(200)
  fs.rmSync(profile, { recursive: true, force: true })
}
process.exit(code)
