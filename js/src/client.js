// The HTTP client and the remote model (client/client.py Client and RemoteModel).
//
//   const client = new Client('http://127.0.0.1:8000')
//   const model = await client.model('breast-cancer-logreg')
//   const labels = await model.predict(rows)
//
// Only public evaluation keys ever leave the client; the secret key stays in its SecretContext and
// the key store. The protocol has no endpoint that accepts decrypted values: sharing CKKS decryptions
// with the server would let it recover the secret key (Li and Micciancio, EUROCRYPT 2021), so
// decrypted results never go back.

import { Blake2b, toHex } from './blake2b.js'
import {
  HEServeError,
  InputError,
  KeyStoreError,
  NotFoundError,
  ProtocolError,
  RequestTimeoutError,
  ServerUnavailableError,
  errorForStatus,
} from './errors.js'
import { packBatch, packSingle } from './encoding.js'
import { SecretContext } from './keys.js'
import { labels, preprocess, probabilities } from './postprocess.js'
import { InputRanges } from './ranges.js'
import { compactSteps } from './rotations.js'
import { loadSeal } from './seal.js'
import { BATCH, COEFFICIENTS, SINGLE, SLOT_SUMS, inputScale, paramsKey, parseSpec } from './spec.js'
import { IndexedDBStorage, MemoryStorage } from './storage.js'
import * as v2 from './v2.js'

export const SINGLE_CIPHERTEXTS_PER_REQUEST = 64
export const REQUEST_BYTES_TARGET = 128 * 1024 * 1024 // split batch uploads near this size
export const KEY_REUSE_MARGIN_MS = 120_000 // a recorded key that expires sooner than this is replaced

/** @typedef {import('./storage.js').KeyStorage} KeyStorage */
/** @typedef {import('./spec.js').CKKSParams} CKKSParams */
/** @typedef {import('./spec.js').EncryptionSpec} EncryptionSpec */
/** @typedef {import('./spec.js').LayoutSpec} LayoutSpec */

/**
 * @typedef {object} ClientOptions
 * @property {string} [apiKey] sent as `Authorization: Bearer <apiKey>`
 * @property {typeof fetch} [fetch] the fetch to use (default: globalThis.fetch)
 * @property {KeyStorage} [storage] where keys are kept (default: IndexedDBStorage in a browser,
 *   MemoryStorage elsewhere)
 * @property {number} [timeoutMs] limit of every HTTP call, body included (default 60000)
 * @property {number} [unavailableWaitMs] a 503 with Retry-After up to this long is waited out once (default 10000)
 * @property {'zstd' | 'none'} [keyCompression] of the uploaded Galois/relinearization keys (default zstd,
 *   as SEAL and the Python SDK: ~20% smaller, ~2 s more CPU for the largest keys)
 * @property {(message: string) => void} [onWarning] input-range warnings (default console.warn); once per model
 * @property {import('./seal.js').Seal} [seal] an already loaded node-seal module
 * @property {number | 'fewest'} [rotationKeys] register Galois keys for at most this many of a model's rotation
 *   steps ('fewest': as few as compose every step); the server composes the others (fewer bytes to upload and
 *   store, less key generation, more server time per single row). Default: all.
 */

/**
 * @typedef {object} HTTPResponse
 * @property {number} status
 * @property {Headers} headers
 * @property {Uint8Array} body
 */

/**
 * @typedef {object} RequestOptions
 * @property {Uint8Array} [body]
 * @property {Record<string, string>} [headers]
 * @property {AbortSignal} [signal]
 */

/**
 * What the last prediction call did and cost.
 * @typedef {object} RunReport
 * @property {number} keygenMs creating keys (secret key, then the evaluation keys uploaded); 0 when reused
 * @property {number} registerMs uploading the evaluation keys; 0 when the server still had them
 * @property {number} encryptMs
 * @property {number} requestMs waiting for inference answers (upload, evaluation, download)
 * @property {number} decryptMs
 * @property {number} bytesSent inference request bodies
 * @property {number} bytesReceived inference response bodies
 * @property {number} keyBytes key registration bodies
 * @property {number} ciphertextBytes ciphertexts sent
 * @property {number} ciphertexts ciphertexts sent
 * @property {string} firstBytesHex the first 32 bytes of the first ciphertext sent, in hex (SEAL's header and
 *   the start of the parameter id: the same for every ciphertext of a parameter set)
 * @property {string} payloadBytesHex 32 bytes from the middle of the first ciphertext, in hex (random-looking
 *   polynomial coefficients)
 * @property {string | null} keyId the server's id of the evaluation keys used
 * @property {string} layout
 * @property {number} rows
 * @property {number} requests inference requests sent
 */

/**
 * Progress of a prediction call. `stage`: "keys" (generating keys), "register" (uploading them),
 * "encrypt", "request" (waiting for the server), "decrypt", "done"; `done` of `total` units of the
 * stage (ciphertexts for encrypt/decrypt, requests for request).
 * @typedef {{stage: 'keys' | 'register' | 'encrypt' | 'request' | 'decrypt' | 'done', done: number, total: number}} Progress
 */

/**
 * @typedef {object} PredictOptions
 * @property {'single' | 'batch'} [layout] default: single for a few rows (rows * 4 <= features), batch otherwise
 * @property {(progress: Progress) => void} [onProgress]
 * @property {AbortSignal} [signal] cancels the HTTP calls
 */

/**
 * Ciphertexts ready to send.
 * @typedef {object} EncryptedRequest
 * @property {'single' | 'batch'} layout
 * @property {number} rows
 * @property {number[]} shape
 * @property {Uint8Array[]} ciphertexts in row-major order of shape
 * @property {string[]} bindings one binding tag per ciphertext
 */

const now = () => globalThis.performance?.now?.() ?? Date.now()

/** Let a browser paint between long synchronous steps. */
const breathe = () => new Promise((resolve) => setTimeout(resolve, 0))

/**
 * Let the event loop go round once fully (timers, then I/O) after long synchronous work such as key
 * generation: Node's fetch learns only then that the server closed an idle keep-alive connection in
 * the meantime, and would otherwise write the next request into the closed socket (EPIPE).
 */
const settle = async () => {
  await breathe()
  await breathe()
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** @param {Uint8Array} bytes */
const json = (bytes) => JSON.parse(new TextDecoder().decode(bytes))

/** Errors a fetch throws when the connection could not be made at all (Node's undici causes). */
const REFUSED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'])

/**
 * @param {Headers} headers
 * @returns {number | null} seconds from a Retry-After header given in seconds
 */
function retryAfter(headers) {
  const raw = headers.get('retry-after')
  if (raw === null) return null
  const seconds = Number(raw)
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null
}

/** A connection to one server: a timeout on every call, typed errors, and the client's keys. */
export class Client {
  /**
   * @param {string} url the server's base URL, e.g. "http://127.0.0.1:8000" (or "" for the page's own origin)
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    this.url = url.replace(/\/+$/, '')
    this.timeoutMs = options.timeoutMs ?? 60_000
    this.unavailableWaitMs = options.unavailableWaitMs ?? 10_000
    this.keyCompression = options.keyCompression ?? 'zstd'
    /** @type {number | 'fewest' | null} */
    this.rotationKeys = options.rotationKeys ?? null
    if (this.rotationKeys !== null && this.rotationKeys !== 'fewest' && (!Number.isInteger(this.rotationKeys) || this.rotationKeys < 1)) {
      throw new InputError(`rotationKeys must be a positive integer or 'fewest', got ${JSON.stringify(options.rotationKeys)}`)
    }
    const f = options.fetch ?? globalThis.fetch
    if (!f) throw new TypeError('no fetch available: pass options.fetch')
    /** @type {typeof fetch} */
    this.fetch = options.fetch ? f : f.bind(globalThis)
    /** @type {KeyStorage} */
    this.storage = options.storage ?? (globalThis.indexedDB ? new IndexedDBStorage() : new MemoryStorage())
    this.onWarning = options.onWarning ?? ((/** @type {string} */ message) => console.warn(message))
    this.seal = options.seal ?? null
    /** @type {Record<string, string>} */
    this.headers = {}
    if (options.apiKey) this.headers.Authorization = `Bearer ${options.apiKey}`
    /** @type {Map<string, Promise<{secret: SecretContext, created: boolean, ms: number, reported: boolean}>>} */
    this.secrets = new Map()
    /** @type {Map<string, Promise<unknown>>} one registration at a time per parameter set */
    this.locks = new Map()
    /** @type {Set<string>} models whose inputs already drew a range warning */
    this.rangeWarned = new Set()
  }

  // --- HTTP ---------------------------------------------------------------------------------------

  /**
   * One HTTP call, with the client's timeout, typed errors for refusals, one retry of idempotent calls
   * on a broken connection, and one wait for a 503 with a short Retry-After.
   * @param {string} method
   * @param {string} path
   * @param {RequestOptions} [options]
   * @returns {Promise<HTTPResponse>}
   */
  async request(method, path, options = {}) {
    // A key registration is not retried (it would register twice); reads, erasures and inferences are.
    const idempotent = !(method === 'POST' && path === '/v2/keys')
    let response = await this.send(method, path, options, idempotent ? 2 : 1)
    const wait = retryAfter(response.headers)
    if (idempotent && response.status === 503 && wait !== null && wait * 1000 <= this.unavailableWaitMs) {
      await sleep(wait * 1000)
      response = await this.send(method, path, options, 2)
    }
    if (response.status >= 400) {
      let message = ''
      let code = null
      try {
        const answer = json(response.body)
        message = String(answer.error ?? '')
        code = typeof answer.code === 'string' ? answer.code : null
      } catch {
        message = new TextDecoder().decode(response.body.subarray(0, 500))
      }
      throw errorForStatus(response.status, message, code, retryAfter(response.headers))
    }
    return response
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {RequestOptions} options
   * @param {number} attempts
   * @returns {Promise<HTTPResponse>}
   */
  async send(method, path, { body, headers, signal }, attempts) {
    const url = this.url + path
    for (let attempt = 1; ; attempt++) {
      const controller = new AbortController()
      let timedOut = false
      const timer = setTimeout(() => {
        timedOut = true
        controller.abort()
      }, this.timeoutMs)
      const cancel = () => controller.abort()
      signal?.addEventListener('abort', cancel, { once: true })
      try {
        if (signal?.aborted) throw signal.reason ?? new Error('aborted')
        const response = await this.fetch(url, {
          method,
          body: /** @type {BodyInit | undefined} */ (body),
          headers: { ...this.headers, ...headers },
          signal: controller.signal,
        })
        const bytes = new Uint8Array(await response.arrayBuffer())
        return { status: response.status, headers: response.headers, body: bytes }
      } catch (error) {
        if (timedOut) {
          throw new RequestTimeoutError(`${method} ${path}: no answer from ${this.url} within ${this.timeoutMs} ms`, {
            code: 'timeout',
            cause: error,
          })
        }
        if (signal?.aborted) {
          throw new HEServeError(`${method} ${path}: cancelled`, { code: 'aborted', cause: error })
        }
        const cause = /** @type {any} */ (error)?.cause
        const refused = REFUSED.has(cause?.code) || REFUSED.has(cause?.errors?.[0]?.code)
        // A write into a connection the server had already closed (a stale keep-alive socket): the request
        // never got through, so even a key registration may be sent again, once.
        const unsent = cause?.code === 'EPIPE' && attempt === 1
        if (refused || (attempt >= attempts && !unsent)) {
          const reason = cause?.code ?? cause?.message ?? /** @type {any} */ (error)?.message ?? String(error)
          throw new ServerUnavailableError(`${method} ${path}: cannot reach ${this.url || 'the server'}: ${reason}`, {
            code: 'unreachable',
            cause: error,
          })
        }
      } finally {
        clearTimeout(timer)
        signal?.removeEventListener('abort', cancel)
      }
    }
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {RequestOptions} [options]
   * @returns {Promise<any>}
   */
  async json(method, path, options) {
    const response = await this.request(method, path, options)
    try {
      return json(response.body)
    } catch {
      throw new ProtocolError(`${method} ${path}: the server's answer is not JSON`)
    }
  }

  // --- metadata -----------------------------------------------------------------------------------

  /** GET /v2: the server's name, version and extensions. */
  serverMetadata() {
    return this.json('GET', '/v2')
  }

  /** GET /v2/models: [{name, versions, platform, state}]. @returns {Promise<any[]>} */
  async models() {
    return (await this.json('GET', '/v2/models')).models
  }

  /** GET /v2/models/{name}. @param {string} name */
  modelMetadata(name) {
    return this.json('GET', `/v2/models/${encodeURIComponent(name)}`)
  }

  /**
   * A remote model: its metadata fetched and its encryption spec checked.
   * @param {string} name
   * @returns {Promise<RemoteModel>}
   */
  async model(name) {
    return new RemoteModel(this, name, await this.modelMetadata(name))
  }

  // --- keys ---------------------------------------------------------------------------------------

  /** @returns {Promise<import('./seal.js').Seal>} */
  async loadSeal() {
    if (!this.seal) this.seal = await loadSeal()
    return this.seal
  }

  /**
   * The secret key for a parameter set: from memory, else from the key store, else a new one (stored).
   * @param {CKKSParams} params
   * @returns {Promise<{secret: SecretContext, created: boolean, ms: number, reported: boolean}>} created: generated
   *   now (it took `ms`), not loaded; reported: its time already went into a RunReport
   */
  secretContext(params) {
    const key = paramsKey(params)
    let entry = this.secrets.get(key)
    if (!entry) {
      entry = (async () => {
        const seal = await this.loadSeal()
        const started = now()
        const stored = await this.storage.get(`secret/${key}`)
        if (stored) {
          const secret = await SecretContext.load(stored, { seal })
          stored.fill(0)
          if (paramsKey(secret.params) !== key) {
            secret.dispose()
            throw new KeyStoreError(`the key stored for ${key} is for ${paramsKey(secret.params)}`)
          }
          return { secret, created: false, ms: now() - started, reported: false }
        }
        const secret = await SecretContext.generate(params, { seal })
        const bytes = secret.save()
        await this.storage.put(`secret/${key}`, bytes)
        bytes.fill(0)
        return { secret, created: true, ms: now() - started, reported: false }
      })()
      this.secrets.set(key, entry)
      entry.catch(() => this.secrets.delete(key))
    }
    return entry
  }

  /**
   * @param {SecretContext} secret
   * @returns {string} identifies the secret key a key id was registered for (a hash of its binding key)
   */
  static fingerprint(secret) {
    return new Blake2b({ digestSize: 8, person: new TextEncoder().encode('heserve-keyid') }).update(secret.bindingKey).hex()
  }

  /** @param {CKKSParams} params */
  registrationName(params) {
    return `keyid/${this.url}/${paramsKey(params)}`
  }

  /**
   * The server's record of this parameter set's keys, as kept in the key store (null if none).
   * @param {CKKSParams} params
   * @returns {Promise<{key_id: string, expires_at: number, steps: number[], relin: boolean, secret: string} | null>}
   */
  async registration(params) {
    const bytes = await this.storage.get(this.registrationName(params))
    if (!bytes) return null
    try {
      const record = json(bytes)
      const valid =
        typeof record?.key_id === 'string' &&
        typeof record.expires_at === 'number' &&
        Array.isArray(record.steps) &&
        typeof record.secret === 'string'
      return valid ? { ...record, relin: Boolean(record.relin) } : null // a damaged record: register anew
    } catch {
      return null
    }
  }

  /**
   * Run `body` alone among the calls for this parameter set.
   * @template T
   * @param {string} key
   * @param {() => Promise<T>} body
   * @returns {Promise<T>}
   */
  async exclusive(key, body) {
    const previous = this.locks.get(key) ?? Promise.resolve()
    const run = previous.catch(() => {}).then(body)
    this.locks.set(key, run)
    try {
      return await run
    } finally {
      if (this.locks.get(key) === run) this.locks.delete(key)
    }
  }

  /**
   * The id of server-side evaluation keys that cover these rotation steps (and relinearization keys
   * if needed): the recorded one if still valid, else a new registration. Keys are shared by every
   * model with the same CKKS parameters; a model needing more steps registers the union.
   * @param {SecretContext} secret
   * @param {number[]} steps
   * @param {boolean} relin
   * @param {{stale?: string, run?: RunReport, onProgress?: (p: Progress) => void}} [options] `stale`: a key id
   *   the server no longer knows (key_not_found): never reused
   * @returns {Promise<string>}
   */
  ensureKeys(secret, steps, relin, { stale, run, onProgress } = {}) {
    const params = secret.params
    return this.exclusive(paramsKey(params), async () => {
      const record = await this.registration(params)
      const fingerprint = Client.fingerprint(secret)
      const usable =
        record &&
        record.key_id !== stale &&
        record.secret === fingerprint &&
        record.expires_at - Date.now() > KEY_REUSE_MARGIN_MS &&
        (!relin || record.relin) &&
        steps.every((s) => record.steps.includes(s))
      if (usable) return record.key_id
      const keep = record && record.secret === fingerprint && record.key_id !== stale
      const allSteps = [...new Set([...steps, ...(keep ? record.steps : [])])].sort((a, b) => a - b)
      const allRelin = relin || Boolean(keep && record.relin)
      onProgress?.({ stage: 'keys', done: 0, total: 1 })
      let started = now()
      const { body, headerLength } = secret.evaluationKeyRequest(allSteps, allRelin, this.keyCompression)
      if (run) run.keygenMs += now() - started
      onProgress?.({ stage: 'register', done: 0, total: 1 })
      await settle()
      started = now()
      const answer = await this.json('POST', '/v2/keys', {
        body,
        headers: { [v2.HEADER_LENGTH]: String(headerLength), 'Content-Type': v2.BINARY_CONTENT_TYPE },
      })
      if (run) {
        run.registerMs += now() - started
        run.keyBytes += body.length
      }
      if (typeof answer?.key_id !== 'string') throw new ProtocolError('the key registration answer has no key_id')
      const expires = Date.parse(answer.expires_at)
      const expiresAt = Number.isFinite(expires) ? expires : Date.now() + 1000 * Number(answer.expires_in_seconds ?? 0)
      const entry = { key_id: answer.key_id, expires_at: expiresAt, steps: allSteps, relin: allRelin, secret: fingerprint }
      await this.storage.put(this.registrationName(params), new TextEncoder().encode(JSON.stringify(entry)))
      if (record && record.key_id !== stale && record.key_id !== answer.key_id) {
        // The superseded keys would only wait for their expiry on the server: erase them now.
        await this.deleteKeyId(record.key_id).catch(() => {})
      }
      return answer.key_id
    })
  }

  /** GET /v2/keys/{id}: the server's record of registered keys. @param {string} keyId */
  keyStatus(keyId) {
    return this.json('GET', `/v2/keys/${encodeURIComponent(keyId)}`)
  }

  /** DELETE /v2/keys/{id}: erase the server's copy of evaluation keys. @param {string} keyId */
  deleteKeyId(keyId) {
    return this.json('DELETE', `/v2/keys/${encodeURIComponent(keyId)}`)
  }

  /**
   * Erase everything kept for a parameter set: the server's copy of the evaluation keys (if any), the
   * record of their id, and the secret key (memory and key store). Every model with these parameters
   * gets new keys on its next call.
   * @param {CKKSParams} params
   * @returns {Promise<{keyId: string | null, erased: boolean}>} erased: the server held the keys and erased them
   */
  eraseKeys(params) {
    const key = paramsKey(params)
    return this.exclusive(key, async () => {
      const record = await this.registration(params)
      let erased = false
      if (record) {
        try {
          await this.deleteKeyId(record.key_id)
          erased = true
        } catch (error) {
          if (!(error instanceof NotFoundError && error.code === 'key_not_found')) throw error
        }
        await this.storage.delete(this.registrationName(params))
      }
      const entry = this.secrets.get(key)
      this.secrets.delete(key)
      if (entry) (await entry.catch(() => null))?.secret.dispose()
      await this.storage.delete(`secret/${key}`)
      return { keyId: record?.key_id ?? null, erased }
    })
  }

  // --- inference ----------------------------------------------------------------------------------

  /**
   * Send ciphertexts (with their binding tags), get the result ciphertexts and their shape back.
   * @param {string} model
   * @param {string} keyId
   * @param {EncryptedRequest} request
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<{ciphertexts: Uint8Array[], shape: number[], bytesSent: number, bytesReceived: number}>}
   */
  async inferCiphertexts(model, keyId, request, { signal } = {}) {
    /** @type {Record<string, unknown>} */
    const parameters = { key_id: keyId, layout: request.layout, rows: request.rows }
    if (request.bindings) parameters.bindings = request.bindings
    const { body, headerLength } = v2.encode(
      { tensors: [{ name: 'ciphertext', datatype: 'BYTES', shape: request.shape, data: request.ciphertexts }], parameters },
      'inputs',
      true
    )
    const response = await this.request('POST', `/v2/models/${encodeURIComponent(model)}/infer`, {
      body,
      headers: { [v2.HEADER_LENGTH]: String(headerLength), 'Content-Type': v2.BINARY_CONTENT_TYPE },
      signal,
    })
    const raw = response.headers.get(v2.HEADER_LENGTH)
    const answer = v2.decode(response.body, raw === null ? null : Number(raw), 'outputs')
    const tensor = answer.tensors[0]
    if (tensor.datatype !== 'BYTES') throw new ProtocolError(`the server answered ${tensor.datatype} data, not ciphertexts`)
    return {
      ciphertexts: /** @type {Uint8Array[]} */ (tensor.data),
      shape: tensor.shape,
      bytesSent: body.length,
      bytesReceived: response.body.length,
    }
  }

  /**
   * Plaintext V2 inference, for baselines and tests: the rows travel UNENCRYPTED (as FP32, JSON) and
   * the server applies the model's preprocessing itself. Returns raw model outputs (rows x outputs).
   * @param {string} model
   * @param {number[][]} rows raw features
   * @returns {Promise<number[][]>}
   */
  async inferPlaintext(model, rows) {
    const features = rows[0]?.length ?? 0
    const { body } = v2.encode(
      { tensors: [{ name: 'input', datatype: 'FP32', shape: [rows.length, features], data: rows.flat() }] },
      'inputs',
      false
    )
    const answer = v2.decode(
      (await this.request('POST', `/v2/models/${encodeURIComponent(model)}/infer`, {
        body,
        headers: { 'Content-Type': v2.JSON_CONTENT_TYPE },
      })).body,
      null,
      'outputs'
    )
    const tensor = answer.tensors[0]
    const values = Array.from(/** @type {ArrayLike<number>} */ (tensor.data), Number)
    const width = tensor.shape.length > 1 ? tensor.shape[tensor.shape.length - 1] : 1
    return Array.from({ length: values.length / width }, (_, r) => values.slice(r * width, (r + 1) * width))
  }
}

/** A model served remotely; inputs stay encrypted. Get one with `await client.model(name)`. */
export class RemoteModel {
  /**
   * @param {Client} client
   * @param {string} name
   * @param {any} metadata GET /v2/models/{name}
   */
  constructor(client, name, metadata) {
    this.client = client
    this.name = name
    this.metadata = metadata
    const parameters = metadata?.parameters ?? {}
    try {
      /** @type {EncryptionSpec} */
      this.spec = parseSpec(parameters.encryption)
    } catch (error) {
      throw new ProtocolError(`model '${name}' does not publish a usable encryption spec: ${/** @type {Error} */ (error).message}`, 'bad_spec')
    }
    /** @type {string[]} */
    this.inputNames = Array.isArray(parameters.input_names) ? parameters.input_names : []
    this.nFeatures = this.spec.nFeatures
    this.nOutputs = this.spec.nOutputs
    /** @type {import('./postprocess.js').Preprocess} */
    this.preprocess = parameters.preprocess ?? { type: 'identity' }
    /** @type {import('./postprocess.js').Postprocess} */
    this.postprocess = parameters.postprocess ?? { type: 'identity' }
    this.description = String(parameters.description ?? '')
    const kind = this.postprocess.type ?? 'identity'
    /** @type {string} "binary-classification", "multiclass-classification" or "regression" (the metadata's, when given) */
    this.task =
      parameters.task ??
      (kind === 'identity' ? 'regression' : kind === 'sigmoid' || this.nOutputs === 2 ? 'binary-classification' : 'multiclass-classification')
    this.isClassifier = kind !== 'identity'
    /** @type {Array<number | string> | null} */
    this.classes = this.isClassifier ? this.postprocess.classes ?? Array.from({ length: Math.max(2, this.nOutputs) }, (_, i) => i) : null
    /** @type {string[] | null} */
    this.classNames = this.postprocess.class_names ?? null
    /** @type {string[] | null} */
    this.outputNames = this.postprocess.output_names ?? null
    this.inputRanges = InputRanges.fromMetadata(parameters.input_ranges, this.nFeatures)
    /** @type {Array<'single' | 'batch'>} the layouts this model accepts */
    this.layouts = /** @type {Array<'single' | 'batch'>} */ (Object.keys(this.spec.layouts))
    /** @type {RunReport | null} */
    this.lastRun = null
  }

  /** The server's id of this model's evaluation keys, as last recorded (null if none). */
  async keyId() {
    return (await this.client.registration(this.spec.ckks))?.key_id ?? null
  }

  /** @returns {Promise<SecretContext>} */
  async secretContext() {
    const { secret } = await this.client.secretContext(this.spec.ckks)
    secret.checkPrimes(this.spec.dataPrimes)
    return secret
  }

  /**
   * Register this model's evaluation keys unless the server still holds them; returns the key id.
   * @param {{stale?: string, run?: RunReport, onProgress?: (p: Progress) => void}} [options]
   */
  async register(options = {}) {
    return this.client.ensureKeys(await this.secretContext(), this.rotationSteps(), this.spec.relinKeysNeeded, options)
  }

  /** The rotation steps whose Galois keys `register` uploads: all, or the client's `rotationKeys` of them. */
  rotationSteps() {
    const steps = this.spec.rotationSteps
    if (this.client.rotationKeys === null || !steps.length) return steps
    return compactSteps(steps, this.spec.ckks.poly_modulus_degree / 2, this.client.rotationKeys, this.spec.rotationUses)
  }

  /**
   * Erase the server's copy of the evaluation keys (DELETE /v2/keys/{id}) and the local secret key
   * with its records. Shared by every model of the same CKKS parameters on this client.
   */
  deleteKey() {
    return this.client.eraseKeys(this.spec.ckks)
  }

  // --- the estimator surface ----------------------------------------------------------------------

  /**
   * Raw model outputs (logits, or values): one number per row for one output, else rows x outputs.
   * @param {number[][] | number[]} rows raw features
   * @param {PredictOptions} [options]
   * @returns {Promise<number[] | number[][]>}
   */
  async decisionFunction(rows, options) {
    const scores = await this.rawScores(rows, options)
    return this.nOutputs === 1 ? scores.map((s) => s[0]) : scores
  }

  /**
   * Class probabilities, rows x classes (classifiers only).
   * @param {number[][] | number[]} rows
   * @param {PredictOptions} [options]
   * @returns {Promise<number[][]>}
   */
  async predictProba(rows, options) {
    if (!this.isClassifier) throw new InputError(`model '${this.name}' is a regression: it has no class probabilities`)
    return probabilities(await this.rawScores(rows, options), this.postprocess)
  }

  /**
   * Labels (from `classes`) for classifiers; values for regressions (one number per row for one output).
   * @param {number[][] | number[]} rows
   * @param {PredictOptions} [options]
   * @returns {Promise<Array<number | string> | number[][]>}
   */
  async predict(rows, options) {
    return labels(await this.rawScores(rows, options), this.postprocess)
  }

  /**
   * Model outputs before post-processing, rows x outputs, computed encrypted.
   * @param {number[][] | number[]} rows raw features (one row may be given as a flat array)
   * @param {PredictOptions} [options]
   * @returns {Promise<number[][]>}
   */
  async rawScores(rows, { layout, onProgress, signal } = {}) {
    const x = this.validate(rows)
    const chosen = layout ?? this.chooseLayout(x.length)
    if (!(chosen in this.spec.layouts)) {
      throw new InputError(`model '${this.name}' accepts layouts ${this.layouts.join(', ')}, not ${JSON.stringify(chosen)}`)
    }
    /** @type {RunReport} */
    const run = {
      keygenMs: 0, registerMs: 0, encryptMs: 0, requestMs: 0, decryptMs: 0,
      bytesSent: 0, bytesReceived: 0, keyBytes: 0, ciphertextBytes: 0, ciphertexts: 0,
      firstBytesHex: '', payloadBytesHex: '', keyId: null, layout: chosen, rows: x.length, requests: 0,
    }
    onProgress?.({ stage: 'keys', done: 0, total: 1 })
    const info = await this.client.secretContext(this.spec.ckks)
    if (info.created && !info.reported) {
      info.reported = true
      run.keygenMs += info.ms
    }
    const secret = await this.secretContext()
    run.keyId = await this.register({ run, onProgress })
    const plan = this.plan(x.length, chosen, secret)
    const scores = []
    let encrypted = 0
    let decrypted = 0
    const totalCiphertexts = plan.reduce((sum, p) => sum + p.ciphertexts, 0)
    const totalResults = plan.reduce((sum, p) => sum + p.results, 0)
    for (const [index, part] of plan.entries()) {
      let started = now()
      const request = await this.encryptPart(x.slice(part.start, part.end), chosen, secret, (count) => {
        encrypted += count
        onProgress?.({ stage: 'encrypt', done: encrypted, total: totalCiphertexts })
      })
      run.encryptMs += now() - started
      run.ciphertexts += request.ciphertexts.length
      run.ciphertextBytes += request.ciphertexts.reduce((sum, c) => sum + c.length, 0)
      if (!run.firstBytesHex) {
        const first = request.ciphertexts[0]
        run.firstBytesHex = toHex(first.subarray(0, 32))
        const middle = Math.floor(first.length / 2)
        run.payloadBytesHex = toHex(first.subarray(middle, middle + 32))
      }
      onProgress?.({ stage: 'request', done: index, total: plan.length })
      await settle()
      started = now()
      const answer = await this.send(request, { run, onProgress, signal })
      run.requestMs += now() - started
      run.requests += 1
      run.bytesSent += answer.bytesSent
      run.bytesReceived += answer.bytesReceived
      onProgress?.({ stage: 'request', done: index + 1, total: plan.length })
      started = now()
      scores.push(...this.decrypt(request, answer.ciphertexts, secret))
      decrypted += answer.ciphertexts.length
      run.decryptMs += now() - started
      onProgress?.({ stage: 'decrypt', done: decrypted, total: totalResults })
    }
    this.lastRun = run
    onProgress?.({ stage: 'done', done: 1, total: 1 })
    return scores
  }

  // --- lower-level steps --------------------------------------------------------------------------

  /**
   * Check raw rows: numbers, finite, the model's feature count; warns once on values far outside the
   * training ranges. A flat array is one row.
   * @param {unknown} rows
   * @returns {number[][]}
   */
  validate(rows) {
    if (!Array.isArray(rows) && !ArrayBuffer.isView(rows)) throw new InputError('rows must be an array of rows (arrays of numbers)')
    const list = /** @type {ArrayLike<unknown>} */ (rows)
    const x = list.length && typeof list[0] === 'number' ? [Array.from(/** @type {ArrayLike<number>} */ (list))] : Array.from(list)
    if (!x.length) throw new InputError('input has no rows')
    const out = x.map((row, i) => {
      if (!Array.isArray(row) && !ArrayBuffer.isView(row)) throw new InputError(`row ${i} is not an array of numbers`)
      const values = Array.from(/** @type {ArrayLike<unknown>} */ (row))
      if (values.length !== this.nFeatures) {
        const names = this.inputNames.length ? ` (${this.inputNames.slice(0, 5).join(', ')}, ...)` : ''
        throw new InputError(`row ${i} has ${values.length} features, but model '${this.name}' expects ${this.nFeatures}${names}`)
      }
      if (!values.every((v) => typeof v === 'number' && Number.isFinite(v))) {
        throw new InputError(`row ${i} holds values that are not finite numbers`)
      }
      return /** @type {number[]} */ (values)
    })
    if (this.inputRanges && !this.client.rangeWarned.has(this.name)) {
      const finding = this.inputRanges.check(out, this.preprocess, this.name, this.inputNames)
      if (finding) {
        this.client.rangeWarned.add(this.name)
        this.client.onWarning(finding.message)
      }
    }
    return out
  }

  /**
   * Single-sample ciphertexts for a few rows (latency), SIMD batch for many (throughput).
   * @param {number} rows
   * @returns {'single' | 'batch'}
   */
  chooseLayout(rows) {
    if (!(BATCH in this.spec.layouts)) return SINGLE
    if (!(SINGLE in this.spec.layouts)) return BATCH
    // One ciphertext per row against one per feature: batch wins once rows outgrow features/4.
    return rows * 4 <= this.nFeatures ? SINGLE : BATCH
  }

  /**
   * How rows split into requests: the Python SDK's sizes.
   * @param {number} rows
   * @param {'single' | 'batch'} layout
   * @param {SecretContext} secret
   * @returns {Array<{start: number, end: number, ciphertexts: number, results: number}>}
   */
  plan(rows, layout, secret) {
    const spec = this.spec.layouts[layout]
    const parts = []
    if (layout === SINGLE) {
      let perRequest = Math.max(1, Math.floor(SINGLE_CIPHERTEXTS_PER_REQUEST / spec.ciphertextsPerRow))
      if (spec.rowsPerRequest > 0) perRequest = Math.min(perRequest, spec.rowsPerRequest)
      for (let start = 0; start < rows; start += perRequest) {
        const end = Math.min(rows, start + perRequest)
        parts.push({ start, end, ciphertexts: (end - start) * spec.ciphertextsPerRow, results: (end - start) * spec.resultsPerRow })
      }
    } else {
      const capacity = Math.min(spec.capacity, secret.slotCount)
      const chunkBytes = this.nFeatures * secret.ciphertextBytes(spec.seeded)
      const step = capacity * Math.max(1, Math.floor(REQUEST_BYTES_TARGET / chunkBytes))
      for (let start = 0; start < rows; start += step) {
        const end = Math.min(rows, start + step)
        const chunks = Math.ceil((end - start) / capacity)
        parts.push({ start, end, ciphertexts: chunks * this.nFeatures, results: chunks * this.nOutputs })
      }
    }
    return parts
  }

  /**
   * Encrypt rows for a layout, split into requests as the Python SDK splits them.
   * @param {number[][] | number[]} rows raw features
   * @param {'single' | 'batch'} layout
   * @returns {Promise<EncryptedRequest[]>}
   */
  async encrypt(rows, layout) {
    const x = this.validate(rows)
    if (!(layout in this.spec.layouts)) throw new InputError(`model '${this.name}' accepts layouts ${this.layouts.join(', ')}, not ${layout}`)
    const secret = await this.secretContext()
    const requests = []
    for (const part of this.plan(x.length, layout, secret)) {
      requests.push(await this.encryptPart(x.slice(part.start, part.end), layout, secret))
    }
    return requests
  }

  /**
   * One request's ciphertexts: rows preprocessed, encoded for the layout, encrypted, tagged.
   * @param {number[][]} rows raw rows, validated
   * @param {'single' | 'batch'} layout
   * @param {SecretContext} secret
   * @param {(count: number) => void} [progress]
   * @returns {Promise<EncryptedRequest>}
   */
  async encryptPart(rows, layout, secret, progress) {
    const x = preprocess(rows, this.preprocess)
    const spec = this.spec.layouts[layout]
    const scale = inputScale(this.spec, spec)
    /** @type {Uint8Array[]} */
    const ciphertexts = []
    let lastBreath = now()
    const produced = async (/** @type {Uint8Array} */ ct) => {
      ciphertexts.push(ct)
      progress?.(1)
      if (now() - lastBreath > 50) {
        await breathe()
        lastBreath = now()
      }
    }
    let shape
    if (layout === SINGLE) {
      for (const row of x) {
        if (spec.encoding === COEFFICIENTS) await produced(secret.encryptCoefficients(row, scale))
        else for (const vector of packSingle(row, spec, secret.slotCount)) await produced(secret.encrypt(vector, scale))
      }
      shape = [x.length, spec.ciphertextsPerRow]
    } else {
      const capacity = Math.min(spec.capacity, secret.slotCount)
      for (let start = 0; start < x.length; start += capacity) {
        for (const column of packBatch(x.slice(start, start + capacity), capacity)) {
          await produced(secret.encrypt(column, scale, spec.seeded))
        }
      }
      shape = [Math.ceil(x.length / capacity), this.nFeatures]
    }
    return { layout, rows: x.length, shape, ciphertexts, bindings: ciphertexts.map((ct) => secret.bind(ct)) }
  }

  /**
   * Send one encrypted request; registers the keys first if needed, and once more if the server
   * answers key_not_found (its copy expired or was erased). Returns the result ciphertexts.
   * @param {EncryptedRequest} request
   * @param {{run?: RunReport, onProgress?: (p: Progress) => void, signal?: AbortSignal}} [options]
   */
  async send(request, { run, onProgress, signal } = {}) {
    const keyId = await this.register({ run, onProgress })
    try {
      return await this.client.inferCiphertexts(this.name, keyId, request, { signal })
    } catch (error) {
      if (!(error instanceof NotFoundError && error.code === 'key_not_found')) throw error
      const fresh = await this.register({ stale: keyId, run, onProgress })
      if (run) run.keyId = fresh
      return this.client.inferCiphertexts(this.name, fresh, request, { signal })
    }
  }

  /**
   * Decrypt result ciphertexts locally: raw outputs, rows x outputs.
   *
   * single, coefficient encoding (linear models): result k of a row holds output k in its constant
   *   coefficient (sum of the NTT values / N, centred, divided by the scale).
   * single, slot encoding (networks): one result per row, outputs in slots 0..nOutputs-1; with
   *   "slot-sums", output k is the sum of the result's slots k, k + p, k + 2p, ... (p: resultPeriod).
   * batch: result k of a chunk holds output k of the chunk's row r in slot r.
   * @param {EncryptedRequest} request
   * @param {Uint8Array[]} results
   * @param {SecretContext} secret
   * @returns {number[][]}
   */
  decrypt(request, results, secret) {
    const k = this.nOutputs
    if (request.layout === SINGLE) {
      const spec = this.spec.layouts[SINGLE]
      if (results.length !== request.rows * spec.resultsPerRow) {
        throw new ProtocolError(`expected ${request.rows * spec.resultsPerRow} result ciphertexts, got ${results.length}`)
      }
      if (spec.encoding === COEFFICIENTS) {
        const values = results.map((r) => secret.decryptConstant(r))
        return Array.from({ length: request.rows }, (_, i) =>
          values.slice(i * spec.resultsPerRow, i * spec.resultsPerRow + k)
        )
      }
      if (spec.encoding === SLOT_SUMS) return results.map((r) => sumSlotClasses(secret.decrypt(r), spec.resultPeriod, k))
      return results.map((r) => Array.from(secret.decrypt(r).subarray(0, k)))
    }
    const capacity = Math.min(this.spec.layouts[BATCH].capacity, secret.slotCount)
    const chunks = Math.ceil(request.rows / capacity)
    if (results.length !== chunks * k) throw new ProtocolError(`expected ${chunks * k} result ciphertexts, got ${results.length}`)
    const out = []
    for (let chunk = 0; chunk < chunks; chunk++) {
      const rows = Math.min(capacity, request.rows - chunk * capacity)
      const slots = results.slice(chunk * k, (chunk + 1) * k).map((r) => secret.decrypt(r))
      for (let r = 0; r < rows; r++) out.push(slots.map((s) => s[r]))
    }
    return out
  }
}

/**
 * Output k of a "slot-sums" result: the sum of its slots k, k + period, k + 2 period, ...
 * @param {Float64Array} slots @param {number} period @param {number} count @returns {number[]}
 */
export function sumSlotClasses(slots, period, count) {
  if (period < count || slots.length % period) {
    throw new ProtocolError(`a result period of ${period} cannot hold ${count} outputs in ${slots.length} slots`)
  }
  const sums = new Array(count).fill(0)
  for (let j = 0; j < slots.length; j++) {
    const k = j % period
    if (k < count) sums[k] += slots[j]
  }
  return sums
}
