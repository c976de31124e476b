// The SDK's parts without a server: V2 bodies, spec parsing, pre/postprocessing, packing, range
// warnings, key stores, HTTP error mapping (with an injected fetch) and SEAL round trips.

import assert from 'node:assert/strict'
import http from 'node:http'
import test from 'node:test'

import {
  AuthenticationError,
  BadRequestError,
  Client,
  HEServeError,
  IndexedDBStorage,
  InputError,
  InputRanges,
  MemoryStorage,
  NotFoundError,
  ProtocolError,
  QuotaError,
  RemoteModel,
  RequestTimeoutError,
  SecretContext,
  ServerUnavailableError,
  compactSteps,
  galoisElement,
  labels,
  packBatch,
  parseSpec,
  preprocess,
  probabilities,
  routes,
  sumSlotClasses,
  tileFeatures,
  v2,
} from '../src/heserve.js'

const LINEAR = { poly_modulus_degree: 4096, coeff_mod_bit_sizes: [60, 49] }

/** A model's metadata as the server publishes it (a linear model with both layouts). */
function linearMetadata() {
  return {
    name: 'toy',
    parameters: {
      task: 'binary-classification',
      input_names: ['a', 'b', 'c'],
      input_ranges: { min: [0, 0, 0], max: [1, 10, 100] },
      preprocess: { type: 'standardize', mean: [0.5, 5, 50], scale: [0.25, 2.5, 25] },
      postprocess: { type: 'sigmoid', classes: [0, 1], class_names: ['no', 'yes'], threshold: 0.5 },
      encryption: {
        scheme: 'CKKS',
        ckks: LINEAR,
        input_scale_bits: 28,
        n_features: 3,
        n_outputs: 1,
        relin_keys_needed: false,
        rotation_steps: [],
        layouts: {
          single: { capacity: 1, rotation_steps: [], galois_elements: [], encoding: 'coefficients', results_per_row: 1, seeded: true },
          batch: { capacity: 2048, rotation_steps: [], galois_elements: [], encoding: 'slots', seeded: true },
          future: { capacity: 1, encoding: 'slots' },
          odd: { capacity: 1, encoding: 'helix' },
        },
      },
    },
  }
}

// --- V2 bodies --------------------------------------------------------------------------------------

test('v2 binary bodies round-trip, BYTES and numeric', () => {
  const ciphertexts = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(300).fill(7)]
  const message = {
    tensors: [
      { name: 'ciphertext', datatype: /** @type {const} */ ('BYTES'), shape: [1, 3], data: ciphertexts },
      { name: 'x', datatype: /** @type {const} */ ('FP32'), shape: [2], data: [1.5, -2] },
      { name: 'i', datatype: /** @type {const} */ ('INT64'), shape: [1], data: [-5n] },
    ],
    parameters: { key_id: 'k', rows: 1 },
  }
  const { body, headerLength } = v2.encode(message, 'outputs', true)
  assert.ok(headerLength !== null && headerLength > 0)
  const header = JSON.parse(new TextDecoder().decode(body.subarray(0, /** @type {number} */ (headerLength))))
  assert.equal(header.outputs[0].parameters.binary_data_size, 3 * 4 + 3 + 0 + 300)
  const back = v2.decode(body, headerLength, 'outputs')
  assert.deepEqual(back.parameters, { key_id: 'k', rows: 1 })
  assert.deepEqual(back.tensors[0].data, ciphertexts)
  assert.deepEqual(back.tensors[1].data, [1.5, -2])
  assert.deepEqual(back.tensors[2].data, [-5n])
})

test('v2 JSON bodies round-trip, nested data flattened', () => {
  const { body, headerLength } = v2.encode(
    { tensors: [{ name: 'input', datatype: 'FP32', shape: [2, 2], data: [1, 2, 3, 4] }] },
    'inputs',
    false
  )
  assert.equal(headerLength, null)
  assert.deepEqual(JSON.parse(new TextDecoder().decode(body)).inputs[0].data, [1, 2, 3, 4])
  const answer = new TextEncoder().encode(JSON.stringify({ outputs: [{ name: 'o', datatype: 'FP32', shape: [2, 1], data: [[0.5], [2]] }] }))
  assert.deepEqual(v2.decode(answer, null, 'outputs').tensors[0].data, [0.5, 2])
})

test('v2 refuses malformed framing', () => {
  const { body, headerLength } = v2.encode({ tensors: [{ name: 'c', datatype: 'BYTES', shape: [1], data: [new Uint8Array(8)] }] }, 'outputs', true)
  const n = /** @type {number} */ (headerLength)
  assert.throws(() => v2.decode(body.subarray(0, body.length - 1), n, 'outputs'), ProtocolError)
  const longer = new Uint8Array(body.length + 2)
  longer.set(body)
  assert.throws(() => v2.decode(longer, n, 'outputs'), /follow the declared tensors/)
  assert.throws(() => v2.decode(body, body.length + 1, 'outputs'), ProtocolError)
  assert.throws(() => v2.decode(new TextEncoder().encode('{"outputs": []}'), null, 'outputs'), /non-empty/)
  assert.throws(() => v2.encode({ tensors: [{ name: 'x', datatype: 'FP32', shape: [3], data: [1] }] }, 'inputs', false), /shape/)
})

// --- spec, pre/postprocessing, packing ----------------------------------------------------------------

test('the encryption spec is parsed as engine/spec.py parses it', () => {
  const spec = parseSpec(linearMetadata().parameters.encryption)
  assert.deepEqual(Object.keys(spec.layouts), ['single', 'batch'], 'unknown layouts and encodings are left out')
  assert.equal(spec.layouts.single.encoding, 'coefficients')
  assert.equal(spec.layouts.single.ciphertextsPerRow, 1)
  assert.equal(spec.nFeatures, 3)
  assert.equal(galoisElement(1, 8192), 3)
  assert.equal(galoisElement(4, 8192), 81)
  assert.equal(galoisElement(2048, 8192), 8193)
  assert.equal(galoisElement(4096, 16384), 16385)
  assert.equal(galoisElement(-1, 8192), galoisElement(4095, 8192))
  const bad = linearMetadata().parameters.encryption
  bad.layouts.single.rotation_steps = [1]
  bad.layouts.single.galois_elements = [5]
  assert.throws(() => parseSpec(bad), /Galois elements/)
  const weak = linearMetadata().parameters.encryption
  weak.ckks = { poly_modulus_degree: 4096, coeff_mod_bit_sizes: [60, 60] }
  assert.throws(() => parseSpec(weak), /128-bit/)
})

test('a slot-sums result: output k is the sum of its slots k mod the result period', () => {
  const enc = linearMetadata().parameters.encryption
  enc.layouts.single = { capacity: 1, rotation_steps: [], galois_elements: [], encoding: 'slot-sums', result_period: 8 }
  const layout = parseSpec(enc).layouts.single
  assert.equal(layout.encoding, 'slot-sums')
  assert.equal(layout.resultPeriod, 8)
  for (const period of [0, 12, 4096]) {
    enc.layouts.single.result_period = period
    assert.throws(() => parseSpec(enc), /result_period/)
  }
  // Slot j: its class k = j mod 8, plus a mask (+3 in the first period, -1 in the three others) that sums to 0.
  const slots = Float64Array.from({ length: 32 }, (_, j) => (j % 8) + (j < 8 ? 3 : -1))
  assert.deepEqual(sumSlotClasses(slots, 8, 5), [0, 4, 8, 12, 16])
  assert.throws(() => sumSlotClasses(slots, 4, 5), ProtocolError)
})

test('a remote model reads task, classes and layouts from its metadata', () => {
  const client = new Client('http://127.0.0.1:9', { storage: new MemoryStorage() })
  const model = new RemoteModel(client, 'toy', linearMetadata())
  assert.equal(model.task, 'binary-classification')
  assert.deepEqual(model.layouts, ['single', 'batch'])
  assert.deepEqual(model.classes, [0, 1])
  assert.deepEqual(model.classNames, ['no', 'yes'])
  assert.deepEqual(model.inputNames, ['a', 'b', 'c'])
  assert.equal(model.chooseLayout(1), 'batch', '1 row * 4 > 3 features')
  assert.throws(() => model.validate([[1, 2]]), /expects 3/)
  assert.throws(() => model.validate([[1, 2, NaN]]), /finite/)
  assert.throws(() => model.validate([]), /no rows/)
  assert.deepEqual(model.validate([0.1, 2, 30]), [[0.1, 2, 30]], 'a flat array is one row')
  const broken = linearMetadata()
  delete (/** @type {any} */ (broken.parameters)).encryption
  assert.throws(() => new RemoteModel(client, 'toy', broken), /encryption spec/)
})

test('preprocessing and postprocessing follow client/postprocess.py', () => {
  assert.deepEqual(preprocess([[1, 10]], { type: 'standardize', mean: [0, 5], scale: [2, 5] }), [[0.5, 1]])
  assert.deepEqual(preprocess([[1, 10]], { type: 'identity' }), [[1, 10]])
  assert.throws(() => preprocess([[1]], { type: 'whiten' }), /upgrade/)
  const p = probabilities([[0], [2]], { type: 'sigmoid' })
  assert.deepEqual(p[0], [0.5, 0.5])
  assert.ok(Math.abs(p[1][1] - 1 / (1 + Math.exp(-2))) < 1e-15)
  assert.deepEqual(labels([[-1], [0], [3]], { type: 'sigmoid', classes: ['a', 'b'] }), ['a', 'b', 'b'])
  assert.deepEqual(labels([[1, 3, 3], [5, 0, 1]], { type: 'softmax', classes: [7, 8, 9] }), [8, 7], 'first maximum wins')
  const soft = probabilities([[1000, 1000, 0]], { type: 'softmax' })[0]
  assert.ok(Math.abs(soft[0] - 0.5) < 1e-12 && soft[2] < 1e-300, 'no overflow')
  assert.deepEqual(labels([[1.5], [2]], { type: 'identity' }), [1.5, 2])
  assert.deepEqual(labels([[1, 2]], { type: 'identity' }), [[1, 2]])
  assert.throws(() => probabilities([[1]], { type: 'identity' }), /regression/)
})

test('single rows are tiled by period, batch rows go by column', () => {
  const [a, b] = tileFeatures([1, 2, 3, 4, 5], 4, 2, 8)
  assert.deepEqual(Array.from(a), [1, 2, 3, 4, 1, 2, 3, 4])
  assert.deepEqual(Array.from(b), [5, 0, 0, 0, 5, 0, 0, 0])
  assert.throws(() => tileFeatures([1, 2, 3], 3, 1, 8), /divide/)
  assert.throws(() => tileFeatures([1, 2, 3], 2, 1, 8), /do not fit/)
  const columns = packBatch([[1, 2], [3, 4], [5, 6]], 4)
  assert.deepEqual(columns.map((c) => Array.from(c)), [[1, 3, 5], [2, 4, 6]])
  assert.throws(() => packBatch([[1], [2]], 1), /do not fit/)
})

test('input ranges warn on values far outside and on already standardized rows', () => {
  const ranges = /** @type {InputRanges} */ (InputRanges.fromMetadata({ min: [0, 0], max: [10, 100] }, 2))
  const pre = { type: 'standardize', mean: [5, 50], scale: [3, 30] }
  assert.equal(ranges.check([[1, 20], [9, 80]], pre, 'm', ['a', 'b']), null)
  const far = ranges.check([[50, 20]], pre, 'm', ['a', 'b']) // width max(10, median 55) = 55: far beyond 37.5
  assert.ok(far && far.far === 1 && !far.standardized && far.message.includes('a'))
  const standardized = ranges.check([[-1, -1], [1, 1], [0.5, -0.5]], pre, 'm', ['a', 'b'])
  assert.ok(standardized && standardized.standardized, 'standardized rows are recognized')
  assert.equal(InputRanges.fromMetadata({ min: [0], max: [1] }, 2), null)
  assert.equal(InputRanges.fromMetadata(undefined, 2), null)
})

// --- key stores ----------------------------------------------------------------------------------------

/** The part of IndexedDB the SDK uses, in memory, with IndexedDB's asynchronous callbacks. */
function fakeIndexedDB() {
  /** @type {Map<string, Map<string, Map<string, unknown>>>} */
  const databases = new Map()
  const later = (/** @type {() => void} */ f) => setTimeout(f, 0)
  return /** @type {any} */ ({
    open(/** @type {string} */ name) {
      /** @type {any} */
      const request = {}
      later(() => {
        const fresh = !databases.has(name)
        if (fresh) databases.set(name, new Map())
        const stores = /** @type {Map<string, Map<string, unknown>>} */ (databases.get(name))
        request.result = {
          objectStoreNames: { contains: (/** @type {string} */ s) => stores.has(s) },
          createObjectStore: (/** @type {string} */ s) => stores.set(s, new Map()),
          close() {},
          transaction(/** @type {string} */ s) {
            /** @type {any} */
            const transaction = {}
            const data = /** @type {Map<string, unknown>} */ (stores.get(s))
            const op = (/** @type {() => unknown} */ f) => {
              /** @type {any} */
              const r = {}
              later(() => {
                r.result = f()
                later(() => transaction.oncomplete?.())
              })
              return r
            }
            transaction.objectStore = () => ({
              get: (/** @type {string} */ k) => op(() => data.get(k)),
              put: (/** @type {Uint8Array} */ v, /** @type {string} */ k) => op(() => void data.set(k, v.slice())),
              delete: (/** @type {string} */ k) => op(() => void data.delete(k)),
            })
            return transaction
          },
        }
        if (fresh) request.onupgradeneeded?.()
        request.onsuccess?.()
      })
      return request
    },
  })
}

for (const [name, make] of /** @type {Array<[string, () => any]>} */ ([
  ['MemoryStorage', () => new MemoryStorage()],
  ['IndexedDBStorage', () => new IndexedDBStorage({ indexedDB: fakeIndexedDB() })],
])) {
  test(`${name} keeps, returns and deletes bytes`, async () => {
    const storage = make()
    assert.equal(await storage.get('x'), null)
    const bytes = new Uint8Array([1, 2, 3])
    await storage.put('x', bytes)
    bytes[0] = 9 // the store keeps its own copy
    assert.deepEqual(await storage.get('x'), new Uint8Array([1, 2, 3]))
    await storage.delete('x')
    assert.equal(await storage.get('x'), null)
    await storage.delete('x')
  })
}

test('IndexedDBStorage needs IndexedDB', () => {
  assert.throws(() => new IndexedDBStorage(), /IndexedDB is not available/)
})

// --- HTTP errors ----------------------------------------------------------------------------------------

/**
 * A fetch answering from a list of canned responses (or throwing), recording each call.
 * @param {Array<Response | Error>} answers
 */
function cannedFetch(answers) {
  /** @type {Array<{url: string, init: RequestInit}>} */
  const calls = []
  /** @type {typeof fetch} */
  const f = async (url, init = {}) => {
    calls.push({ url: String(url), init })
    const next = answers.shift()
    if (!next) throw new Error('no more canned answers')
    if (next instanceof Error) throw next
    return next
  }
  return { fetch: f, calls }
}

/** @param {number} status @param {object} body @param {Record<string, string>} [headers] */
const answer = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } })

test('HTTP errors become typed errors with the server code', async () => {
  const cases = /** @type {Array<[number, Function, string]>} */ ([
    [401, AuthenticationError, 'unauthorized'],
    [403, AuthenticationError, 'forbidden'],
    [404, NotFoundError, 'model_not_found'],
    [400, BadRequestError, 'binding_mismatch'],
    [413, BadRequestError, 'body_too_large'],
    [500, ServerUnavailableError, 'internal'],
  ])
  for (const [status, kind, code] of cases) {
    const { fetch } = cannedFetch([answer(status, { error: `no (${status})`, code })])
    const client = new Client('http://h', { fetch, storage: new MemoryStorage() })
    await assert.rejects(client.models(), (/** @type {any} */ e) => {
      assert.ok(e instanceof kind && e instanceof HEServeError, `${status}: ${e.name}`)
      assert.equal(e.status, status)
      assert.equal(e.code, code)
      assert.equal(e.message, `no (${status})`)
      return true
    })
  }
  const { fetch } = cannedFetch([answer(429, { error: 'slow down', code: 'rate_limited' }, { 'Retry-After': '7' })])
  await assert.rejects(new Client('http://h', { fetch }).models(), (/** @type {any} */ e) => e instanceof QuotaError && e.retryAfter === 7 && e.code === 'rate_limited')
  const text = cannedFetch([new Response('<html>bad gateway</html>', { status: 502 })])
  await assert.rejects(new Client('http://h', { fetch: text.fetch }).models(), (/** @type {any} */ e) => e instanceof ServerUnavailableError && e.code === null && /bad gateway/.test(e.message))
})

test('the API key goes in the Authorization header', async () => {
  const { fetch, calls } = cannedFetch([answer(200, { models: [] })])
  await new Client('http://h/', { fetch, apiKey: 'secret-token' }).models()
  assert.equal(calls[0].url, 'http://h/v2/models')
  assert.equal(/** @type {any} */ (calls[0].init.headers).Authorization, 'Bearer secret-token')
})

test('a broken connection is retried once for idempotent calls, never for a key registration', async () => {
  const broken = () => Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNRESET' } })
  const get = cannedFetch([broken(), answer(200, { models: [{ name: 'm' }] })])
  assert.deepEqual(await new Client('http://h', { fetch: get.fetch }).models(), [{ name: 'm' }])
  assert.equal(get.calls.length, 2)
  const post = cannedFetch([broken(), answer(201, { key_id: 'x' })])
  await assert.rejects(new Client('http://h', { fetch: post.fetch }).json('POST', '/v2/keys', { body: new Uint8Array(1) }), ServerUnavailableError)
  assert.equal(post.calls.length, 1)
  const refused = cannedFetch([Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } })])
  await assert.rejects(new Client('http://h', { fetch: refused.fetch }).models(), (/** @type {any} */ e) => e instanceof ServerUnavailableError && e.code === 'unreachable')
  assert.equal(refused.calls.length, 1, 'a refused connection is not retried')
})

test('a 503 with a short Retry-After is waited out once', async () => {
  const { fetch, calls } = cannedFetch([answer(503, { error: 'restarting', code: 'unavailable' }, { 'Retry-After': '0' }), answer(200, { models: [] })])
  assert.deepEqual(await new Client('http://h', { fetch }).models(), [])
  assert.equal(calls.length, 2)
})

test('a server that does not answer in time gives RequestTimeoutError', async (t) => {
  const server = http.createServer(() => {}) // accepts, never answers
  await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(null)))
  t.after(() => {
    server.closeAllConnections()
    server.close()
  })
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address())
  const client = new Client(`http://127.0.0.1:${port}`, { timeoutMs: 200 })
  const started = Date.now()
  await assert.rejects(client.models(), (/** @type {any} */ e) => e instanceof RequestTimeoutError && e instanceof ServerUnavailableError && e.code === 'timeout')
  assert.ok(Date.now() - started < 5000)
})

test('a caller can cancel with an AbortSignal', async () => {
  /** @type {typeof fetch} */
  const never = (_url, init) =>
    new Promise((_resolve, reject) => init?.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))))
  const client = new Client('http://h', { fetch: never })
  const controller = new AbortController()
  const pending = client.request('GET', '/v2', { signal: controller.signal })
  controller.abort()
  await assert.rejects(pending, (/** @type {any} */ e) => e instanceof HEServeError && e.code === 'aborted')
})

// --- SEAL round trips (node-seal, no server) ------------------------------------------------------------

test('slots and coefficients round-trip through node-seal; keys save and load', async () => {
  const secret = await SecretContext.generate(LINEAR)
  assert.equal(secret.slotCount, 2048)
  const values = [0.5, -1.25, 3, 0, 7.75]
  const slots = secret.decrypt(secret.encrypt(values, 2 ** 30))
  values.forEach((v, i) => assert.ok(Math.abs(slots[i] - v) < 1e-5, `slot ${i}`))
  const full = secret.encrypt(values, 2 ** 30, false)
  assert.ok(full.length > secret.encrypt(values, 2 ** 30).length, 'a full ciphertext is larger than a seeded one')
  // The constant coefficient of a coefficient-encoded input is its first value.
  for (const first of [0.3, -2.5, 0]) {
    const ct = secret.encryptCoefficients([first, 4, -4, 1], 2 ** 28)
    assert.ok(Math.abs(secret.decryptConstant(ct) - first) < 1e-6, `constant ${first}`)
  }
  assert.throws(() => secret.encryptCoefficients([2 ** 40], 2 ** 28), /2\^62/)
  const saved = secret.save()
  assert.equal(new TextDecoder().decode(saved.subarray(0, 6)), 'HESK1\n')
  const again = await SecretContext.load(saved)
  assert.deepEqual(again.bindingKey, secret.bindingKey)
  const back = again.decrypt(secret.encrypt(values, 2 ** 30))
  assert.ok(Math.abs(back[1] + 1.25) < 1e-5, 'the reloaded key decrypts what the original encrypted')
  await assert.rejects(SecretContext.load(new Uint8Array(20)), /SecretContext.save/)
  assert.throws(() => secret.checkPrimes([1, 2]), /primes/)
  secret.checkPrimes(secret.firstPrimes.map(Number))
  secret.dispose()
  again.dispose()
})

test('a key registration carries public material only', async () => {
  const secret = await SecretContext.generate({ poly_modulus_degree: 8192, coeff_mod_bit_sizes: [45, 45, 45, 60] })
  const { body, headerLength } = secret.evaluationKeyRequest([1, 2, 4], true, 'none')
  const message = v2.decode(body, headerLength, 'inputs')
  assert.deepEqual(message.tensors.map((t) => t.name), ['public_key', 'galois_keys', 'relin_keys'])
  assert.deepEqual(message.parameters.ckks, secret.params)
  assert.match(String(message.parameters.binding_key), /^[0-9a-f]{64}$/)
  // No window of the secret key's bytes appears in the body.
  const key = /** @type {Uint8Array} */ (secret.secretKey.saveToArray(secret.seal.ComprModeType.none))
  const needle = Buffer.from(key.subarray(key.length >> 1, (key.length >> 1) + 64))
  assert.equal(Buffer.from(body).indexOf(needle), -1)
  secret.dispose()
})

test('registrations are reused, extended to new steps, and replaced when stale or about to expire', async () => {
  /** @type {string[]} */
  const calls = []
  let next = 0
  let expiresIn = 900_000
  /** @type {typeof fetch} */
  const fetch = async (url, init = {}) => {
    const method = init.method ?? 'GET'
    calls.push(`${method} ${new URL(String(url)).pathname}`)
    if (method === 'POST') {
      const expires = new Date(Date.now() + expiresIn).toISOString()
      return answer(201, { key_id: `key${++next}`, expires_at: expires })
    }
    return answer(200, { status: 'erased' })
  }
  const storage = new MemoryStorage()
  const client = new Client('http://h', { fetch, storage })
  const { secret } = await client.secretContext(LINEAR)
  assert.equal(await client.ensureKeys(secret, [], false), 'key1')
  assert.equal(await client.ensureKeys(secret, [], false), 'key1', 'reused')
  assert.deepEqual(calls, ['POST /v2/keys'])
  assert.equal(await client.ensureKeys(secret, [1], false), 'key2', 'a step the registration lacks')
  assert.deepEqual(calls.slice(1), ['POST /v2/keys', 'DELETE /v2/keys/key1'], 'the superseded key is erased')
  assert.deepEqual((await client.registration(LINEAR))?.steps, [1])
  assert.equal(await client.ensureKeys(secret, [], false), 'key2', 'a registration covering more steps serves')
  assert.equal(await client.ensureKeys(secret, [], false, { stale: 'key2' }), 'key3', 'a key the server lost')
  expiresIn = 60_000
  assert.equal(await client.ensureKeys(secret, [], false, { stale: 'key3' }), 'key4')
  assert.equal(await client.ensureKeys(secret, [], false), 'key5', 'expiring within two minutes: replaced')
  await storage.put(client.registrationName(LINEAR), new TextEncoder().encode('{"damaged": true'))
  assert.equal(await client.registration(LINEAR), null)
  // The secret key is kept once and reloaded by another client on the same store.
  const other = new Client('http://h', { fetch, storage })
  const { secret: reloaded, created } = await other.secretContext(LINEAR)
  assert.equal(created, false)
  assert.deepEqual(reloaded.bindingKey, secret.bindingKey)
  const erased = await client.eraseKeys(LINEAR)
  assert.equal(erased.keyId, null, 'the damaged record named no key')
  assert.equal(await storage.get('secret/4096-60.49'), null)
})

test('compact rotation keys: the steps chosen and the routes composed, as engine/rotations.py', () => {
  const powers = Array.from({ length: 12 }, (_, k) => 2 ** k)
  assert.deepEqual(compactSteps(powers, 4096, 4), [1, 8, 64, 512])
  assert.deepEqual(compactSteps(powers, 4096, 12), powers)
  const mnist = [1, 2, 4, 8, 16, 32, 64, 128, 1024, 2048]
  const uses = { 1: 1, 2: 1, 4: 1, 8: 1, 16: 4, 32: 2, 64: 1, 128: 7, 1024: 1, 2048: 1 }
  assert.deepEqual(compactSteps(mnist, 4096, 4, uses), [1, 8, 64, 1024])
  assert.deepEqual(compactSteps(mnist, 4096, 4), [1, 4, 32, 1024])
  const paths = /** @type {Map<number, number[]>} */ (routes(powers, [1, 8, 64, 512], 4096))
  assert.deepEqual(paths.get(4), [1, 1, 1, 1])
  assert.deepEqual(paths.get(2048), [512, 512, 512, 512])
  assert.deepEqual(routes([3072], [1024], 4096)?.get(3072), [1024, 1024, 1024])
  assert.equal(routes([16], [1, 2048], 4096), null)
  assert.throws(() => compactSteps(powers, 4096, 3), InputError)
  assert.deepEqual(compactSteps(powers, 4096, 'fewest'), [1, 8, 64, 512])
  assert.deepEqual(compactSteps([1, 3000], 4096, 'fewest'), [1, 3000]) // nothing smaller composes them
  const deep = [1, 2, 4, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096]
  assert.equal(compactSteps(deep, 8192, 'fewest').length, 5)
  assert.throws(() => new Client('http://x', { rotationKeys: /** @type {any} */ ('few') }), InputError)
  assert.throws(() => new Client('http://x', { rotationKeys: 0 }), InputError)
})
