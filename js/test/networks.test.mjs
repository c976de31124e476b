// The networks against a real server (HESERVE_URL): the one-activation networks (N=8192, packed single
// layout; digits-mlp also in batch) and the deep ones (N=16384, ~60-100 MB of keys, ~1 s per row on
// the server: one row each), compared with the server's plaintext answers.

import assert from 'node:assert/strict'
import test from 'node:test'

import { Client, MemoryStorage } from '../src/heserve.js'
import { API_KEY, NO_SERVER, URL, assertClose, rowsFor } from './helpers.mjs'

const client = new Client(URL || 'http://127.0.0.1:9', { apiKey: API_KEY, storage: new MemoryStorage(), onWarning: (m) => assert.fail(m) })

/**
 * @param {string} name
 * @param {'single' | 'batch'} layout
 * @param {number} rows
 * @param {number} seed
 */
async function agrees(name, layout, rows, seed) {
  const model = await client.model(name)
  assert.ok(model.isClassifier)
  assert.equal(model.classes?.length, 10)
  const x = rowsFor(model, rows, seed)
  const plain = await client.inferPlaintext(name, x)
  const scores = await model.rawScores(x, { layout })
  const run = /** @type {import('../src/client.js').RunReport} */ (model.lastRun)
  assertClose(scores, plain, `${name} ${layout}`)
  const labels = await model.predict(x, { layout })
  plain.forEach((row, i) => {
    const sorted = [...row].sort((a, b) => b - a)
    if (sorted[0] - sorted[1] > 1e-2) assert.equal(labels[i], row.indexOf(sorted[0]), `${name} row ${i} label`)
  })
  return { model, run }
}

test('one-activation networks, single layout, agree with the plaintext answers', { skip: NO_SERVER, timeout: 120_000 }, async () => {
  const keyIds = new Set()
  for (const [i, name] of ['digits-mlp', 'digits-cnn', 'mnist-size-mlp'].entries()) {
    const { model, run } = await agrees(name, 'single', 2, 20 + i)
    assert.equal(model.spec.ckks.poly_modulus_degree, 8192)
    assert.ok(model.spec.layouts.single.packing, 'a packed single layout')
    // Each result slot is masked; the SDK sums the classes of slots into the outputs it compared.
    assert.equal(model.spec.layouts.single.encoding, 'slot-sums')
    assert.equal(model.spec.layouts.single.resultPeriod, model.spec.layouts.single.packing.out_period)
    assert.equal(run.ciphertexts, 2)
    keyIds.add(run.keyId)
  }
  assert.equal(keyIds.size, 1, 'one registration for the three models of one parameter set')
})

test('digits-mlp in the batch layout (full ciphertexts, one per feature)', { skip: NO_SERVER, timeout: 120_000 }, async () => {
  const { model, run } = await agrees('digits-mlp', 'batch', 3, 30)
  assert.equal(model.spec.layouts.batch.seeded, false)
  assert.equal(run.ciphertexts, 64)
  assert.ok(run.ciphertextBytes > 64 * 2 * 3 * 8192 * 8, 'full ciphertexts')
})

test('deep networks, single layout, one row each', { skip: NO_SERVER, timeout: 180_000 }, async () => {
  // depth 5 fits N=8192 with 27-bit primes; depth 7 needs N=16384
  const rings = { 'digits-cryptonets': 8192, 'digits-mlp3': 16384 }
  for (const [i, name] of ['digits-cryptonets', 'digits-mlp3'].entries()) {
    const { model, run } = await agrees(name, 'single', 1, 40 + i)
    assert.equal(model.spec.ckks.poly_modulus_degree, rings[name])
    assert.ok(model.spec.layouts.single.rowsPerRequest > 0)
    assert.ok(run.keyBytes > 5e6, `${name}: ${run.keyBytes} bytes of keys`)
    assert.ok(run.keygenMs > 0 && run.registerMs > 0, 'keys made and registered for each parameter set')
  }
})

test("single rows of deep networks are split by the spec's rows_per_request", { skip: NO_SERVER }, async () => {
  for (const name of ['digits-cryptonets', 'digits-mlp3']) {
    const model = await client.model(name)
    const per = model.spec.layouts.single.rowsPerRequest
    const secret = await model.secretContext()
    const parts = model.plan(2 * per + 1, 'single', secret)
    assert.deepEqual(parts.map((p) => p.end - p.start), [per, per, 1], name)
  }
})

test('rotationKeys: 4 registers under 4 MB of keys and answers the same', { skip: NO_SERVER, timeout: 120_000 }, async () => {
  const compact = new Client(URL || 'http://127.0.0.1:9', {
    apiKey: API_KEY,
    storage: new MemoryStorage(),
    onWarning: (m) => assert.fail(m),
    rotationKeys: 4,
  })
  const model = await compact.model('digits-mlp')
  assert.deepEqual(model.rotationSteps(), [1, 8, 64, 512])
  const x = rowsFor(model, 2, 50)
  const plain = await compact.inferPlaintext('digits-mlp', x)
  const scores = await model.rawScores(x, { layout: 'single' })
  assertClose(scores, plain, 'digits-mlp with 4 rotation keys')
  const run = /** @type {import('../src/client.js').RunReport} */ (model.lastRun)
  assert.ok(run.keyBytes > 3e6 && run.keyBytes < 4e6, `${run.keyBytes} bytes of keys`)
  const status = await compact.keyStatus(/** @type {string} */ (await model.keyId()))
  assert.equal(status.galois_elements.length, 4)
  await model.deleteKey()
})

test("rotationKeys weighs the spec's rotation_uses (mnist-size-mlp rotates by 128 seven times a row)", { skip: NO_SERVER }, async () => {
  const compact = new Client(URL || 'http://127.0.0.1:9', { apiKey: API_KEY, storage: new MemoryStorage(), rotationKeys: 4 })
  const model = await compact.model('mnist-size-mlp')
  assert.equal(model.spec.rotationUses[128], 7)
  assert.deepEqual(model.rotationSteps(), [1, 8, 64, 1024])
})
