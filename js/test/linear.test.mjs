// The linear models against a real server (HESERVE_URL), both layouts, compared with the server's
// plaintext answers; key reuse, erasure and re-registration; the typed errors.

import assert from 'node:assert/strict'
import net from 'node:net'
import test from 'node:test'

import {
  AuthenticationError,
  BadRequestError,
  Client,
  MemoryStorage,
  NotFoundError,
  ServerUnavailableError,
} from '../src/heserve.js'
import { API_KEY, NO_SERVER, URL, assertClose, recordingFetch, rowsFor } from './helpers.mjs'

const LINEAR_MODELS = ['breast-cancer-logreg', 'diabetes-linreg', 'linnerud-linreg']

/** @param {Partial<import('../src/client.js').ClientOptions>} [options] */
const newClient = (options = {}) =>
  new Client(URL, { apiKey: API_KEY, storage: new MemoryStorage(), onWarning: (m) => assert.fail(m), ...options })

test('linear models, both layouts, agree with the plaintext answers', { skip: NO_SERVER }, async () => {
  const client = newClient()
  const keyIds = new Set()
  for (const [index, name] of LINEAR_MODELS.entries()) {
    const model = await client.model(name)
    assert.deepEqual(model.layouts, ['single', 'batch'])
    assert.equal(model.spec.layouts.single.encoding, 'coefficients')
    const rows = rowsFor(model, 5, 10 + index)
    const plain = await client.inferPlaintext(name, rows)
    for (const layout of /** @type {const} */ (['single', 'batch'])) {
      const scores = await model.rawScores(rows, { layout })
      const worst = assertClose(scores, plain, `${name} ${layout}`)
      const run = /** @type {import('../src/client.js').RunReport} */ (model.lastRun)
      assert.equal(run.layout, layout)
      assert.equal(run.rows, 5)
      assert.equal(run.requests, 1)
      assert.equal(run.ciphertexts, layout === 'single' ? 5 : model.nFeatures)
      assert.match(run.firstBytesHex, /^5ea1/, 'a SEAL header')
      assert.ok(run.bytesSent > run.ciphertextBytes && run.bytesReceived > 0)
      assert.ok(worst < 1e-3, `${name} ${layout}: CKKS error ${worst}`)
      keyIds.add(run.keyId)
    }
    const values = await model.decisionFunction(rows, { layout: 'single' })
    if (model.nOutputs === 1) assert.equal(typeof values[0], 'number')
    else assert.equal(/** @type {number[][]} */ (values)[0].length, model.nOutputs)
  }
  assert.equal(keyIds.size, 1, 'the three models share one parameter set: one key registration')
})

test('a classifier predicts labels and probabilities', { skip: NO_SERVER }, async () => {
  const client = newClient()
  const model = await client.model('breast-cancer-logreg')
  assert.equal(model.task, 'binary-classification')
  assert.deepEqual(model.classes, [0, 1])
  const rows = rowsFor(model, 6, 3)
  const plain = (await client.inferPlaintext(model.name, rows)).map((r) => r[0])
  const labels = await model.predict(rows, { layout: 'batch' })
  plain.forEach((z, i) => {
    if (Math.abs(z) > 1e-3) assert.equal(labels[i], z >= 0 ? 1 : 0, `row ${i}`)
  })
  const proba = await model.predictProba(rows, { layout: 'single' })
  for (const [i, [p0, p1]] of proba.entries()) {
    assert.ok(Math.abs(p0 + p1 - 1) < 1e-12)
    assert.ok(Math.abs(p1 - 1 / (1 + Math.exp(-plain[i]))) < 1e-3)
  }
  const regression = await client.model('diabetes-linreg')
  await assert.rejects(regression.predictProba(rowsFor(regression, 1)), /regression/)
  assert.equal(regression.task, 'regression')
})

test('single rows are split into requests of 64 ciphertexts; progress is reported', { skip: NO_SERVER }, async () => {
  const client = newClient()
  const model = await client.model('diabetes-linreg')
  const rows = rowsFor(model, 70, 5)
  /** @type {string[]} */
  const stages = []
  const scores = await model.rawScores(rows, { layout: 'single', onProgress: (p) => stages.push(p.stage) })
  assertClose(scores, await client.inferPlaintext(model.name, rows), 'diabetes 70 rows')
  assert.equal(model.lastRun?.requests, 2)
  for (const stage of ['keys', 'register', 'encrypt', 'request', 'decrypt', 'done']) assert.ok(stages.includes(stage), stage)
  assert.equal(stages.at(-1), 'done')
})

test('the secret key never leaves the client', { skip: NO_SERVER }, async () => {
  const { fetch, sent } = recordingFetch()
  const storage = new MemoryStorage()
  const client = newClient({ fetch, storage })
  const model = await client.model('linnerud-linreg')
  await model.predict(rowsFor(model, 2), { layout: 'single' })
  await model.predict(rowsFor(model, 2), { layout: 'batch' })
  const stored = /** @type {Uint8Array} */ (await storage.get('secret/4096-60'))
  assert.ok(stored && stored.length > 4096 * 8, 'the secret key is in the key store')
  const bodies = sent.filter((s) => s.body).map((s) => Buffer.from(/** @type {Uint8Array} */ (s.body)))
  assert.ok(bodies.length >= 3)
  for (const at of [0.25, 0.5, 0.75]) {
    const offset = Math.floor(stored.length * at)
    const needle = Buffer.from(stored.subarray(offset, offset + 48))
    for (const body of bodies) assert.equal(body.indexOf(needle), -1, 'no window of the secret key in any request')
  }
  const registration = sent.find((s) => s.url.endsWith('/v2/keys'))
  assert.ok(registration, 'keys were registered')
})

test('deleteKey erases the server copy and the local key; the next call registers anew', { skip: NO_SERVER }, async () => {
  const storage = new MemoryStorage()
  const client = newClient({ storage })
  const model = await client.model('breast-cancer-logreg')
  const rows = rowsFor(model, 2, 8)
  await model.predict(rows, { layout: 'single' })
  const keyId = /** @type {string} */ (model.lastRun?.keyId)
  assert.equal((await client.keyStatus(keyId)).status, 'active')
  assert.equal(await model.keyId(), keyId)
  const result = await model.deleteKey()
  assert.deepEqual(result, { keyId, erased: true })
  await assert.rejects(client.keyStatus(keyId), (/** @type {any} */ e) => e instanceof NotFoundError && e.status === 404 && e.code === 'key_not_found')
  assert.equal(await storage.get('secret/4096-60'), null, 'the secret key is gone from the key store')
  assert.equal(await model.keyId(), null)
  assert.deepEqual(await model.deleteKey(), { keyId: null, erased: false }, 'erasing twice is harmless')
  await model.predict(rows, { layout: 'single' })
  assert.notEqual(model.lastRun?.keyId, keyId)
  assert.ok((model.lastRun?.keygenMs ?? 0) > 0, 'a new secret key was generated')
})

test('keys the server lost (expired or erased) are registered again, once', { skip: NO_SERVER }, async () => {
  const client = newClient()
  const model = await client.model('diabetes-linreg')
  const rows = rowsFor(model, 3, 9)
  const first = await model.rawScores(rows, { layout: 'batch' })
  const keyId = /** @type {string} */ (model.lastRun?.keyId)
  await client.deleteKeyId(keyId) // behind the model's back: it still records keyId
  const again = await model.rawScores(rows, { layout: 'batch' })
  assertClose(again, first, 'after re-registration')
  assert.notEqual(model.lastRun?.keyId, keyId)
  assert.ok((model.lastRun?.registerMs ?? 0) > 0)
  assert.ok((model.lastRun?.keygenMs ?? 0) > 0, 'evaluation keys made again (the secret key is the same)')
  assert.equal(model.lastRun?.requests, 1)
})

test('an unknown model is NotFoundError model_not_found', { skip: NO_SERVER }, async () => {
  await assert.rejects(newClient().model('no-such-model'), (/** @type {any} */ e) => {
    assert.ok(e instanceof NotFoundError)
    assert.equal(e.status, 404)
    assert.equal(e.code, 'model_not_found')
    return true
  })
})

test('a server that is down is ServerUnavailableError', async () => {
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = /** @type {net.AddressInfo} */ (probe.address())
      probe.close(() => resolve(p))
    })
  })
  const client = new Client(`http://127.0.0.1:${port}`, { storage: new MemoryStorage() })
  await assert.rejects(client.model('breast-cancer-logreg'), (/** @type {any} */ e) => {
    assert.ok(e instanceof ServerUnavailableError, e.name)
    assert.equal(e.status, 0)
    assert.equal(e.code, 'unreachable')
    return true
  })
})

test('a wrong API key is AuthenticationError', { skip: NO_SERVER || (!API_KEY && 'the server has no API keys (set HESERVE_API_KEY)') }, async () => {
  for (const apiKey of ['wrong-key', undefined]) {
    const client = new Client(URL, { apiKey, storage: new MemoryStorage() })
    await assert.rejects(client.models(), (/** @type {any} */ e) => {
      assert.ok(e instanceof AuthenticationError, e.name)
      assert.equal(e.status, 401)
      assert.equal(e.code, 'unauthorized')
      return true
    })
  }
})

test('ciphertexts made under another secret key are refused (binding_mismatch)', { skip: NO_SERVER }, async () => {
  const alice = newClient()
  const bob = newClient()
  const aliceModel = await alice.model('breast-cancer-logreg')
  const bobModel = await bob.model('breast-cancer-logreg')
  const bobKey = await bobModel.register()
  const [request] = await aliceModel.encrypt(rowsFor(aliceModel, 2), 'single')
  await assert.rejects(bob.inferCiphertexts(bobModel.name, bobKey, request), (/** @type {any} */ e) => {
    assert.ok(e instanceof BadRequestError, e.name)
    assert.equal(e.status, 400)
    assert.equal(e.code, 'binding_mismatch')
    return true
  })
  // Bob's own request under Bob's key goes through.
  const [own] = await bobModel.encrypt(rowsFor(bobModel, 2), 'single')
  const answer = await bob.inferCiphertexts(bobModel.name, bobKey, own)
  assert.equal(answer.ciphertexts.length, 2)
})
