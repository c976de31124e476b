// The client's CKKS keys (client/keys.py SecretContext). The secret key is created here and only ever
// leaves this object through `save()`, for the client's own key store: what goes to the server is the
// public key, the Galois keys for the model's rotation steps, the relinearization keys and the
// binding key, none of which reveals the secret key.

import { mod, modPow, rint } from './arith.js'
import { bindingTag, newBindingKey } from './binding.js'
import { toHex, fromHex } from './blake2b.js'
import { HEServeError, InputError, KeyStoreError, ProtocolError } from './errors.js'
import { describeSealError, loadSeal } from './seal.js'
import { parseParams } from './spec.js'
import * as v2 from './v2.js'

/** @typedef {import('./seal.js').Seal} Seal */
/** @typedef {import('./spec.js').CKKSParams} CKKSParams */

const KEY_FILE_MAGIC = new TextEncoder().encode('HESK1\n')
const HEADER = 16 // SEALHeader
const MAGIC = 0xa15e
const CT_PREFIX = 32 + 1 + 8 * 5 // parms_id, NTT flag, size, N, primes, scale, correction factor
const MAX_COEFFICIENT = 2 ** 62

/**
 * Write a SEALHeader (uncompressed) at `offset`.
 * @param {DataView} view @param {number} offset @param {number[]} version @param {number} size
 */
function writeHeader(view, offset, version, size) {
  view.setUint16(offset, MAGIC, true)
  view.setUint8(offset + 2, HEADER)
  view.setUint8(offset + 3, version[0])
  view.setUint8(offset + 4, version[1])
  view.setUint8(offset + 5, 0)
  view.setUint16(offset + 6, 0, true)
  view.setBigUint64(offset + 8, BigInt(size), true)
}

/**
 * @template T
 * @param {Array<{delete(): void} | null | undefined>} objects
 * @param {() => T} body
 * @returns {T}
 */
function using(objects, body) {
  try {
    return body()
  } finally {
    for (const o of objects) o?.delete()
  }
}

/**
 * A secret key with its CKKS parameters: encrypts inputs and decrypts results locally.
 *
 * Create one with `SecretContext.generate(params)`, keep it with `save()` (bytes that hold the secret
 * key: store them only where the client keeps secrets) and reload it with `SecretContext.load(bytes)`.
 */
export class SecretContext {
  /**
   * @param {Seal} seal
   * @param {CKKSParams} params
   * @param {import('node-seal').SEALContext} context
   * @param {import('node-seal').SecretKey} secretKey
   * @param {Uint8Array} bindingKey
   */
  constructor(seal, params, context, secretKey, bindingKey) {
    this.seal = seal
    this.params = params
    /** The random key of the binding tags (registered with the evaluation keys; not a CKKS key). */
    this.bindingKey = bindingKey
    this.context = context
    this.secretKey = secretKey
    this.keygen = new seal.KeyGenerator(context, secretKey)
    this.encoder = new seal.CKKSEncoder(context)
    const publicKey = this.keygen.createPublicKey()
    this.encryptor = new seal.Encryptor(context, publicKey, secretKey)
    publicKey.delete()
    this.decryptor = new seal.Decryptor(context, secretKey)
    this.evaluator = new seal.Evaluator(context)
    /** @type {number} */
    this.slotCount = this.encoder.slotCount()
    const parmsBytes = /** @type {Uint8Array} */ (this._parms().saveToArray(seal.ComprModeType.none))
    /** SEAL's serialization version [major, minor] of this build (4.1 for node-seal 7). */
    this.version = [parmsBytes[3], parmsBytes[4]]
    const first = context.firstContextData()
    /** @type {bigint[]} */
    this.firstParmsId = Array.from(context.firstParmsId().values())
    /** The data primes of the first level (every prime but the special one, or the only one). @type {bigint[]} */
    this.firstPrimes = []
    const moduli = first.parms().coeffModulus()
    for (let i = 0; i < moduli.size(); i++) this.firstPrimes.push(/** @type {any} */ (moduli.get(i)).value())
    this.n = params.poly_modulus_degree
  }

  _parms() {
    return this.context.keyContextData().parms()
  }

  /**
   * SEAL's context for these parameters, with SEAL's own 128-bit security check.
   * @param {Seal} seal
   * @param {CKKSParams} params
   */
  static contextFor(seal, params) {
    const parms = new seal.EncryptionParameters(seal.SchemeType.ckks)
    parms.setPolyModulusDegree(params.poly_modulus_degree)
    parms.setCoeffModulus(seal.CoeffModulus.Create(params.poly_modulus_degree, Int32Array.from(params.coeff_mod_bit_sizes)))
    const context = new seal.SEALContext(parms, true, seal.SecLevelType.tc128)
    parms.delete()
    if (!context.parametersSet()) {
      context.delete()
      throw new ProtocolError(`SEAL refuses the parameters ${JSON.stringify(params)}`, 'bad_parameters')
    }
    return context
  }

  /**
   * A new secret key (and binding key) for these parameters.
   * @param {CKKSParams} params
   * @param {{seal?: Seal}} [options]
   * @returns {Promise<SecretContext>}
   */
  static async generate(params, { seal } = {}) {
    const s = seal ?? (await loadSeal())
    const context = SecretContext.contextFor(s, params)
    const keygen = new s.KeyGenerator(context)
    const secretKey = keygen.secretKey()
    keygen.delete()
    return new SecretContext(s, params, context, secretKey, newBindingKey())
  }

  /**
   * The key as bytes for the client's own key store, in the Python SDK's key-file layout:
   * "HESK1\n", the header's length (4 bytes, little-endian), a JSON header with the parameters and
   * the binding key, then SEAL's serialization of the secret key. Never send these bytes anywhere.
   * @returns {Uint8Array}
   */
  save() {
    const header = new TextEncoder().encode(JSON.stringify({ ...this.params, binding_key: toHex(this.bindingKey) }))
    const key = /** @type {Uint8Array} */ (this.secretKey.saveToArray(this.seal.ComprModeType.none))
    const out = new Uint8Array(KEY_FILE_MAGIC.length + 4 + header.length + key.length)
    out.set(KEY_FILE_MAGIC, 0)
    new DataView(out.buffer).setUint32(KEY_FILE_MAGIC.length, header.length, true)
    out.set(header, KEY_FILE_MAGIC.length + 4)
    out.set(key, KEY_FILE_MAGIC.length + 4 + header.length)
    key.fill(0)
    return out
  }

  /**
   * Reload a key written by `save()`.
   * @param {Uint8Array} bytes
   * @param {{seal?: Seal}} [options]
   * @returns {Promise<SecretContext>}
   */
  static async load(bytes, { seal } = {}) {
    const s = seal ?? (await loadSeal())
    const m = KEY_FILE_MAGIC.length
    if (bytes.length < m + 4 || !KEY_FILE_MAGIC.every((b, i) => bytes[i] === b)) {
      throw new KeyStoreError('the stored key was not written by SecretContext.save')
    }
    const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(m, true)
    let params
    let bindingKey
    try {
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(m + 4, m + 4 + length)))
      params = parseParams(header)
      bindingKey = fromHex(header.binding_key)
      if (bindingKey.length !== 32) throw new Error('the binding key must have 32 bytes')
    } catch (error) {
      throw new KeyStoreError(`the stored key has a bad header: ${/** @type {Error} */ (error).message}`, error)
    }
    const context = SecretContext.contextFor(s, params)
    const secretKey = new s.SecretKey()
    try {
      secretKey.loadFromArray(context, bytes.slice(m + 4 + length))
    } catch (error) {
      secretKey.delete()
      context.delete()
      throw new KeyStoreError(`the stored secret key does not load: ${describeSealError(error)}`, error)
    }
    return new SecretContext(s, params, context, secretKey, bindingKey)
  }

  /**
   * Check the context's data primes against the ones the server's plan names (when it names them).
   * @param {number[] | null} primes
   */
  checkPrimes(primes) {
    if (!primes) return
    const ours = this.firstPrimes.map(Number)
    if (primes.length !== ours.length || primes.some((p, i) => p !== ours[i])) {
      throw new ProtocolError(
        `the server's plan uses the primes [${primes}], SEAL made [${this.firstPrimes}] for ${JSON.stringify(this.params)}`,
        'parameters_mismatch'
      )
    }
  }

  // --- public evaluation material ---------------------------------------------------------------

  /**
   * A V2 binary body registering the public key (seeded), the Galois keys for exactly these steps and,
   * if asked, the relinearization keys (POST /v2/keys), as client/keys.py evaluation_key_request.
   * @param {number[]} rotationSteps
   * @param {boolean} relinKeys
   * @param {'zstd' | 'none'} [compression] of the Galois and relinearization keys (SEAL's default: zstd)
   * @returns {{body: Uint8Array, headerLength: number}}
   */
  evaluationKeyRequest(rotationSteps, relinKeys, compression = 'zstd') {
    const s = this.seal
    const mode = compression === 'none' ? s.ComprModeType.none : s.ComprModeType.zstd
    const save = (/** @type {{saveToArray(m: any): any, delete(): void}} */ serializable, /** @type {any} */ how) => {
      try {
        return /** @type {Uint8Array} */ (serializable.saveToArray(how))
      } finally {
        serializable.delete()
      }
    }
    /** @type {import('./v2.js').Tensor[]} */
    const tensors = [
      { name: 'public_key', datatype: 'BYTES', shape: [1], data: [save(this.keygen.createPublicKeySerializable(), s.ComprModeType.none)] },
    ]
    if (rotationSteps.length) {
      const steps = Int32Array.from(new Set(rotationSteps))
      tensors.push({ name: 'galois_keys', datatype: 'BYTES', shape: [1], data: [save(this.keygen.createGaloisKeysSerializableWithSteps(steps), mode)] })
    }
    if (relinKeys) {
      tensors.push({ name: 'relin_keys', datatype: 'BYTES', shape: [1], data: [save(this.keygen.createRelinKeysSerializable(), mode)] })
    }
    const { body, headerLength } = v2.encode(
      { tensors, parameters: { ckks: this.params, binding_key: toHex(this.bindingKey) } },
      'inputs',
      true
    )
    return { body, headerLength: /** @type {number} */ (headerLength) }
  }

  // --- encryption -------------------------------------------------------------------------------

  /**
   * Encrypt up to slotCount real values in the slots of one ciphertext.
   * @param {ArrayLike<number>} values
   * @param {number} scale
   * @param {boolean} [seeded] SEAL's half-size form (the second polynomial regenerated from a seed);
   *   otherwise the full ciphertext, whose coefficients the server reads directly
   * @returns {Uint8Array} uncompressed, as the server wants it
   */
  encrypt(values, scale, seeded = true) {
    const s = this.seal
    if (values.length > this.slotCount) throw new InputError(`${values.length} values do not fit ${this.slotCount} slots`)
    const plain = new s.Plaintext()
    return using([plain], () => {
      this.encoder.encode(Float64Array.from(values), scale, plain)
      if (seeded) {
        const ct = this.encryptor.encryptSymmetricSerializable(plain)
        return using([ct], () => /** @type {Uint8Array} */ (ct.saveToArray(s.ComprModeType.none)))
      }
      const ct = new s.Ciphertext()
      return using([ct], () => {
        this.encryptor.encryptSymmetric(plain, ct)
        return /** @type {Uint8Array} */ (ct.saveToArray(s.ComprModeType.none))
      })
    })
  }

  /**
   * Encrypt up to N real values in polynomial coefficients (value i in coefficient i), seeded: the
   * single layout of linear models (engine/coefficients.py CoefficientCodec.encode). SEAL exposes its
   * NTT for ciphertexts only, so the coefficients are carried into NTT form as the first polynomial
   * of a ciphertext built byte by byte, then written into an NTT-form plaintext at the first level.
   * @param {ArrayLike<number>} values
   * @param {number} scale
   * @returns {Uint8Array}
   */
  encryptCoefficients(values, scale) {
    const s = this.seal
    const n = this.n
    const primes = this.firstPrimes
    if (values.length > n) throw new InputError(`${values.length} values do not fit ${n} coefficients`)
    const scaled = Array.from(values, (v) => rint(v * scale))
    if (scaled.some((c) => !(Math.abs(c) < MAX_COEFFICIENT))) {
      throw new InputError(`values times the scale 2^${Math.log2(scale).toFixed(0)} exceed 2^62`)
    }
    // The carrier: [coefficients, ones] (the second polynomial only keeps SEAL from refusing a
    // transparent ciphertext), coefficient form, scale 1.
    const polyBytes = 8 * primes.length * n
    const total = HEADER + CT_PREFIX + HEADER + 8 + 2 * polyBytes
    const bytes = new Uint8Array(total)
    const view = new DataView(bytes.buffer)
    writeHeader(view, 0, this.version, total)
    this.firstParmsId.forEach((w, i) => view.setBigUint64(HEADER + 8 * i, w, true))
    view.setUint8(HEADER + 32, 0)
    view.setBigUint64(HEADER + 33, 2n, true)
    view.setBigUint64(HEADER + 41, BigInt(n), true)
    view.setBigUint64(HEADER + 49, BigInt(primes.length), true)
    view.setFloat64(HEADER + 57, 1.0, true)
    view.setBigUint64(HEADER + 65, 1n, true)
    const inner = HEADER + CT_PREFIX
    writeHeader(view, inner, this.version, HEADER + 8 + 2 * polyBytes)
    view.setBigUint64(inner + HEADER, BigInt(2 * primes.length * n), true)
    const data = inner + HEADER + 8
    primes.forEach((q, p) => {
      scaled.forEach((c, i) => {
        if (c !== 0) view.setBigUint64(data + 8 * (p * n + i), mod(BigInt(c), q), true)
      })
      for (let i = 0; i < n; i++) view.setBigUint64(data + polyBytes + 8 * (p * n + i), 1n, true)
    })
    const carrier = new s.Ciphertext()
    const plain = new s.Plaintext()
    return using([carrier, plain], () => {
      carrier.loadFromArray(this.context, bytes)
      this.evaluator.cipherTransformToNttInplace(carrier)
      const saved = /** @type {Uint8Array} */ (carrier.saveToArray(s.ComprModeType.none))
      // An NTT-form plaintext: header, parms_id, coefficient count, scale, DynArray of the residues.
      const count = primes.length * n
      const plainTotal = HEADER + 48 + HEADER + 8 + 8 * count
      const out = new Uint8Array(plainTotal)
      const pv = new DataView(out.buffer)
      writeHeader(pv, 0, this.version, plainTotal)
      this.firstParmsId.forEach((w, i) => pv.setBigUint64(HEADER + 8 * i, w, true))
      pv.setBigUint64(HEADER + 32, BigInt(count), true)
      pv.setFloat64(HEADER + 40, scale, true)
      writeHeader(pv, HEADER + 48, this.version, HEADER + 8 + 8 * count)
      pv.setBigUint64(HEADER + 48 + HEADER, BigInt(count), true)
      out.set(saved.subarray(data, data + 8 * count), HEADER + 48 + HEADER + 8)
      plain.loadFromArray(this.context, out)
      const ct = this.encryptor.encryptSymmetricSerializable(plain)
      return using([ct], () => /** @type {Uint8Array} */ (ct.saveToArray(s.ComprModeType.none)))
    })
  }

  /**
   * The tag that tells the server this ciphertext was made with this context's key.
   * @param {Uint8Array} ciphertext
   */
  bind(ciphertext) {
    return bindingTag(this.bindingKey, ciphertext)
  }

  /** Approximate size of one fresh ciphertext on the wire. @param {boolean} [seeded] */
  ciphertextBytes(seeded = true) {
    const full = 2 * Math.max(1, this.params.coeff_mod_bit_sizes.length - 1) * this.n * 8
    return seeded ? full / 2 : full
  }

  // --- decryption -------------------------------------------------------------------------------

  /**
   * @param {Uint8Array} data
   * @returns {import('node-seal').Ciphertext}
   */
  _load(data) {
    const ct = new this.seal.Ciphertext()
    try {
      ct.loadFromArray(this.context, data)
    } catch (error) {
      ct.delete()
      throw new ProtocolError(`the server returned an unreadable ciphertext: ${describeSealError(error)}`, 'bad_ciphertext')
    }
    return ct
  }

  /**
   * Decrypt one result ciphertext; every slot.
   * @param {Uint8Array} data
   * @returns {Float64Array}
   */
  decrypt(data) {
    const ct = this._load(data)
    const plain = new this.seal.Plaintext()
    return using([ct, plain], () => {
      this.decryptor.decrypt(ct, plain)
      return Float64Array.from(this.encoder.decodeFloat64(plain))
    })
  }

  /**
   * Decrypt a coefficient-encoded result (a linear model's single layout): its constant coefficient,
   * centred mod q and divided by its scale. The constant coefficient of a polynomial is the sum of
   * its NTT values divided by N (engine/coefficients.py CoefficientCodec.constant).
   * @param {Uint8Array} data
   * @returns {number}
   */
  decryptConstant(data) {
    const s = this.seal
    const ct = this._load(data)
    const plain = new s.Plaintext()
    return using([ct, plain], () => {
      const parms = Array.from(ct.parmsId().values())
      if (ct.size() !== 2 || parms.some((w, i) => w !== this.firstParmsId[i])) {
        throw new ProtocolError("the server returned a result at another level than a linear model's", 'bad_ciphertext')
      }
      if (this.firstPrimes.length !== 1) throw new HEServeError('reading a coefficient needs a single-prime level here')
      this.decryptor.decrypt(ct, plain)
      const saved = /** @type {Uint8Array} */ (plain.saveToArray(s.ComprModeType.none))
      const view = new DataView(saved.buffer, saved.byteOffset, saved.byteLength)
      const q = this.firstPrimes[0]
      const count = Number(view.getBigUint64(HEADER + 32, true))
      const scale = view.getFloat64(HEADER + 40, true)
      const start = HEADER + 48 + HEADER + 8
      // Split at 32 bits: neither partial sum of N values reaches 2^53.
      let low = 0
      let high = 0
      for (let i = 0; i < count; i++) {
        low += view.getUint32(start + 8 * i, true)
        high += view.getUint32(start + 8 * i + 4, true)
      }
      const sum = (BigInt(high) << 32n) + BigInt(low)
      let value = (mod(sum, q) * modPow(BigInt(count), q - 2n, q)) % q
      if (value > q / 2n) value -= q
      return Number(value) / scale
    })
  }

  /** Free SEAL's memory for this context (WebAssembly objects are not garbage collected). */
  dispose() {
    for (const o of [this.encryptor, this.decryptor, this.encoder, this.evaluator, this.keygen, this.secretKey, this.context]) {
      if (!o.isDeleted()) o.delete()
    }
  }
}
