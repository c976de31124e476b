// The SDK in a browser, loaded from a static folder (./sdk = js/src, ./vendor = node-seal's dist):
// keys in IndexedDB, a linear model in both layouts and a network in the single layout, compared with
// the server's plaintext answers, then erasure. Writes "PASS {...}" or "FAIL ..." into #out, which
// js/test/browser-smoke.mjs reads over the DevTools protocol.

import { Client, IndexedDBStorage, NotFoundError } from './sdk/heserve.js'

const out = /** @type {HTMLElement} */ (document.getElementById('out'))

/** @param {number[][]} a @param {number[][]} b */
function worst(a, b) {
  const scale = Math.max(1, ...b.flat().map(Math.abs))
  return Math.max(...a.flatMap((row, i) => row.map((v, k) => Math.abs(v - b[i][k])))) / scale
}

/** @param {import('./sdk/heserve.js').RemoteModel} model @param {number} count */
function rows(model, count) {
  const { low, high } = /** @type {NonNullable<typeof model.inputRanges>} */ (model.inputRanges)
  return Array.from({ length: count }, (_, r) => low.map((l, j) => l + (((r + 1) * (j + 3)) % 7) / 7 * (high[j] - l)))
}

try {
  const storage = new IndexedDBStorage({ database: `heserve-smoke-${Date.now()}` })
  const client = new Client('', { storage }) // '' : the page's own origin
  const errors = {}
  const linear = await client.model('breast-cancer-logreg')
  const x = rows(linear, 3)
  const plain = await client.inferPlaintext(linear.name, x)
  errors.single = worst(await linear.rawScores(x, { layout: 'single' }), plain)
  errors.batch = worst(await linear.rawScores(x, { layout: 'batch' }), plain)
  const keyId = /** @type {string} */ (linear.lastRun?.keyId)
  const stored = await storage.get('secret/4096-60')
  const network = await client.model('digits-mlp')
  const y = rows(network, 1)
  errors.network = worst(await network.rawScores(y, { layout: 'single' }), await client.inferPlaintext(network.name, y))
  const erased = await linear.deleteKey()
  let gone = false
  try {
    await client.keyStatus(keyId)
  } catch (error) {
    gone = error instanceof NotFoundError && error.code === 'key_not_found'
  }
  const afterErase = await storage.get('secret/4096-60')
  const ok = Object.values(errors).every((e) => e < 1e-3) && stored !== null && afterErase === null && erased.erased && gone
  out.textContent = `${ok ? 'PASS' : 'FAIL'} ${JSON.stringify({ errors, storedBytes: stored?.length ?? 0, erased, gone, afterErase })}`
  await network.deleteKey()
} catch (error) {
  const e = /** @type {any} */ (error)
  out.textContent = `FAIL ${e?.name}: ${e?.message}\n${e?.stack ?? ''}`
}
