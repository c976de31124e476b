// What a client needs to encrypt for a model, as the server publishes it in the model's metadata under
// `parameters.encryption` (engine/spec.py EncryptionSpec, engine/params.py CKKSParams).

import { ProtocolError } from './errors.js'

export const SINGLE = 'single'
export const BATCH = 'batch'
export const SLOTS = 'slots'
export const COEFFICIENTS = 'coefficients'
// Inputs in slots; output k of a result is the sum of its slots k, k + p, k + 2p, ... for
// p = resultPeriod (each slot alone is masked by the server; a class's masks sum to zero).
export const SLOT_SUMS = 'slot-sums'
const LAYOUTS = [SINGLE, BATCH]
const ENCODINGS = [SLOTS, COEFFICIENTS, SLOT_SUMS]

// Largest total coefficient-modulus size (bits) at 128-bit security, per ring degree (SEAL's hestdparms.h).
export const MAX_COEFF_BITS_128 = { 1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881 }

/**
 * @typedef {object} CKKSParams
 * @property {number} poly_modulus_degree N
 * @property {number[]} coeff_mod_bit_sizes bit sizes of the primes; with two or more, the last is SEAL's special
 *   prime; a single prime carries data and switches no keys
 */

/**
 * A network's single-layout packing (engine/packing.py PackedLayout).
 * @typedef {object} Packing
 * @property {number} ciphertexts ciphertexts per row
 * @property {number} period features per ciphertext, tiled across every slot
 * @property {number} window
 * @property {number} hidden
 * @property {number} baby
 * @property {number} out_period
 */

/**
 * One input layout a model accepts (engine/spec.py LayoutSpec).
 * @typedef {object} LayoutSpec
 * @property {'single' | 'batch'} name
 * @property {number} capacity rows per ciphertext (batch) or 1 (single)
 * @property {number[]} rotationSteps
 * @property {number[]} rotationUses rotations one row takes by each step (aligned with rotationSteps; empty: not published)
 * @property {number[]} galoisElements
 * @property {number} period features per period of a slot-encoded single row (0: none given)
 * @property {string} method
 * @property {Packing | null} packing
 * @property {boolean} seeded send seeded ciphertexts (half size) or full ones
 * @property {number | null} scaleBits this layout's input scale, when it differs from the model's
 * @property {'slots' | 'coefficients' | 'slot-sums'} encoding
 * @property {number} resultPeriod "slot-sums": output k sums the result's slots k mod this period (0: none)
 * @property {number} resultsPerRow single layout: result ciphertexts per row
 * @property {number} rowsPerRequest single layout: the server's advice for rows per request (0: none)
 * @property {number} ciphertextsPerRow single layout: ciphertexts per row
 */

/**
 * A model's encryption spec.
 * @typedef {object} EncryptionSpec
 * @property {CKKSParams} ckks
 * @property {number} inputScaleBits
 * @property {number} nFeatures
 * @property {number} nOutputs
 * @property {Record<string, LayoutSpec>} layouts the layouts this SDK understands, by name
 * @property {boolean} relinKeysNeeded
 * @property {number[]} rotationSteps every step of every layout: the Galois keys to register
 * @property {Record<number, number>} rotationUses rotations per row by each step, where published
 * @property {number[] | null} dataPrimes the data primes the server's plan names, when it names them (as JSON
 *   numbers: exact below 2^53, rounded above)
 * @property {Record<string, unknown>} raw the spec as published
 */

/**
 * Galois element of a left rotation by `step` slots: 3^step mod 2N (negative steps wrap).
 * @param {number} step
 * @param {number} n poly_modulus_degree
 */
export function galoisElement(step, n) {
  const slots = n / 2
  let e = ((step % slots) + slots) % slots
  let result = 1
  let base = 3
  const m = 2 * n
  while (e > 0) {
    if (e & 1) result = (result * base) % m
    base = (base * base) % m
    e >>= 1
  }
  return result
}

/** @param {CKKSParams} params @returns {string} a stable name of the parameter set, e.g. "4096-60.49" */
export function paramsKey(params) {
  return `${params.poly_modulus_degree}-${params.coeff_mod_bit_sizes.join('.')}`
}

/**
 * Check a CKKS parameter set as engine/params.py does (well formed, 128-bit secure).
 * @param {unknown} data
 * @returns {CKKSParams}
 */
export function parseParams(data) {
  const d = /** @type {any} */ (data)
  if (!d || typeof d !== 'object') throw new ProtocolError('CKKS parameters must be a JSON object', 'bad_spec')
  const n = d.poly_modulus_degree
  const bits = d.coeff_mod_bit_sizes
  if (!Number.isInteger(n) || !(n in MAX_COEFF_BITS_128)) throw new ProtocolError(`poly_modulus_degree ${n} is not supported`, 'bad_spec')
  if (!Array.isArray(bits) || bits.length < 1 || !bits.every((b) => Number.isInteger(b) && b >= 17 && b <= 60)) {
    throw new ProtocolError(`coeff_mod_bit_sizes must list primes of 17..60 bits, got ${JSON.stringify(bits)}`, 'bad_spec')
  }
  const total = bits.reduce((a, b) => a + b, 0)
  if (total > MAX_COEFF_BITS_128[/** @type {keyof typeof MAX_COEFF_BITS_128} */ (n)]) {
    throw new ProtocolError(`a coefficient modulus of ${total} bits at N=${n} is below 128-bit security`, 'bad_spec')
  }
  return { poly_modulus_degree: n, coeff_mod_bit_sizes: [...bits] }
}

/**
 * @param {string} name
 * @param {any} entry
 * @param {number} n
 * @returns {LayoutSpec}
 */
function parseLayout(name, entry, n) {
  const int = (/** @type {unknown} */ v, /** @type {number} */ fallback) => {
    if (v === undefined || v === null) return fallback
    if (!Number.isInteger(v)) throw new ProtocolError(`layout ${name}: ${JSON.stringify(v)} is not an integer`, 'bad_spec')
    return /** @type {number} */ (v)
  }
  const rotationSteps = (entry.rotation_steps ?? []).map((/** @type {unknown} */ s) => int(s, 0))
  const galoisElements = rotationSteps.map((/** @type {number} */ s) => galoisElement(s, n))
  const rotationUses = (entry.rotation_uses ?? []).map((/** @type {unknown} */ u) => int(u, 0))
  if (rotationUses.length && (rotationUses.length !== rotationSteps.length || rotationUses.some((/** @type {number} */ u) => u < 1))) {
    throw new ProtocolError(`layout ${name}: rotation_uses must give a positive count per rotation step`, 'bad_spec')
  }
  if (Array.isArray(entry.galois_elements) && JSON.stringify(entry.galois_elements) !== JSON.stringify(galoisElements)) {
    throw new ProtocolError(`layout ${name}: the published Galois elements do not match its rotation steps`, 'bad_spec')
  }
  /** @type {Packing | null} */
  let packing = null
  if (entry.packing) {
    /** @type {Record<string, number>} */
    const fields = {}
    for (const key of ['ciphertexts', 'period', 'window', 'hidden', 'baby', 'out_period']) {
      const value = int(entry.packing[key], -1)
      if (value < 1) throw new ProtocolError(`layout ${name}: packing.${key} must be a positive integer`, 'bad_spec')
      fields[key] = value
    }
    packing = /** @type {Packing} */ (/** @type {unknown} */ (fields))
  }
  const capacity = int(entry.capacity, -1)
  if (capacity < 1) throw new ProtocolError(`layout ${name}: capacity must be a positive integer`, 'bad_spec')
  const resultPeriod = int(entry.result_period, 0)
  if ((entry.encoding ?? SLOTS) === SLOT_SUMS && (resultPeriod < 1 || (resultPeriod & (resultPeriod - 1)) || resultPeriod > n / 2)) {
    throw new ProtocolError(`layout ${name}: result_period ${resultPeriod} is not a power of two dividing ${n / 2} slots`, 'bad_spec')
  }
  return {
    name: /** @type {'single' | 'batch'} */ (name),
    capacity,
    rotationSteps,
    rotationUses,
    galoisElements,
    period: int(entry.period, 0),
    method: String(entry.method ?? ''),
    packing,
    seeded: entry.seeded === undefined ? true : Boolean(entry.seeded),
    scaleBits: entry.scale_bits === undefined || entry.scale_bits === null ? null : int(entry.scale_bits, 0),
    encoding: entry.encoding ?? SLOTS,
    resultsPerRow: int(entry.results_per_row, 1),
    resultPeriod,
    rowsPerRequest: int(entry.rows_per_request, 0),
    ciphertextsPerRow: packing ? packing.ciphertexts : 1,
  }
}

/**
 * Parse `parameters.encryption` of a model's metadata, as EncryptionSpec.from_json does: layouts
 * or encodings this SDK does not know are left out (a newer server may offer more).
 * @param {unknown} data
 * @returns {EncryptionSpec}
 */
export function parseSpec(data) {
  const d = /** @type {any} */ (data)
  if (!d || typeof d !== 'object') throw new ProtocolError('the model publishes no encryption spec', 'bad_spec')
  const ckks = parseParams(d.ckks)
  const n = ckks.poly_modulus_degree
  /** @type {Record<string, LayoutSpec>} */
  const layouts = {}
  for (const [name, entry] of Object.entries(d.layouts ?? {})) {
    if (!LAYOUTS.includes(name) || !ENCODINGS.includes(/** @type {any} */ (entry)?.encoding ?? SLOTS)) continue
    layouts[name] = parseLayout(name, entry, n)
  }
  if (!Object.keys(layouts).length) throw new ProtocolError('the model offers no layout this SDK understands', 'bad_spec')
  for (const key of ['input_scale_bits', 'n_features', 'n_outputs']) {
    if (!Number.isInteger(d[key]) || d[key] < 1) throw new ProtocolError(`encryption spec: ${key} must be a positive integer`, 'bad_spec')
  }
  const steps = new Set()
  /** @type {Record<number, number>} */
  const uses = {}
  for (const layout of Object.values(layouts)) {
    layout.rotationSteps.forEach((s) => steps.add(s))
    layout.rotationUses.forEach((u, i) => (uses[layout.rotationSteps[i]] = (uses[layout.rotationSteps[i]] ?? 0) + u))
  }
  const primes = d.plan?.coeff_modulus
  return {
    ckks,
    inputScaleBits: d.input_scale_bits,
    nFeatures: d.n_features,
    nOutputs: d.n_outputs,
    layouts,
    relinKeysNeeded: Boolean(d.relin_keys_needed),
    rotationSteps: [...steps].sort((a, b) => a - b),
    rotationUses: uses,
    dataPrimes: Array.isArray(primes) && primes.every((p) => typeof p === 'number') ? primes : null,
    raw: d,
  }
}

/** @param {EncryptionSpec} spec @param {LayoutSpec} layout @returns {number} the input scale, 2^bits */
export function inputScale(spec, layout) {
  return 2 ** (layout.scaleBits ?? spec.inputScaleBits)
}
