#!/usr/bin/env node
// Keys and ciphertexts exactly as a SEAL 4.1 client writes them (node-seal 7, Microsoft SEAL 4.1.2 in
// WebAssembly), and decryption of what the server sends back: the bytes tests/test_seal41.py feeds the
// server, and the check that its answers load in SEAL 4.1.
//
//   node tools/seal41-fixtures.mjs keys OUTDIR < spec.json
//       writes into OUTDIR: secret_key.bin (for the test's own decryption: it never goes to a server),
//       parms.bin, public_key.{none,zstd}.bin (seeded), relin_keys.{none,zlib,zstd}.bin (seeded, when
//       spec.relin_keys), galois_keys.{none,zlib,zstd}.bin (seeded, when spec.rotation_steps),
//       ciphertext.seeded.{none,zlib,zstd}.bin and ciphertext.full.{none,zstd}.bin (spec.vector in the
//       slots), coefficients.I.bin (row I of spec.coefficients in the polynomial's coefficients, seeded
//       and uncompressed: what the Python SDK sends for the single layout of a linear model) and
//       manifest.json (SEAL version, parms ids, files).
//   node tools/seal41-fixtures.mjs decrypt SECRET_KEY CIPHERTEXT... < spec.json
//       prints {"results": [{"seal_version", "scale", "values"}]}: the first spec.count slots
//       (spec.encoding "slots", the default) or the constant coefficient (spec.encoding "coefficients").
//   node tools/seal41-fixtures.mjs resave KIND INPUT OUTPUT [KIND INPUT OUTPUT ...] < spec.json
//       loads INPUT as KIND (ciphertext, public_key, relin_keys, galois_keys, secret_key, plaintext) and
//       writes it back uncompressed, seeds expanded: SEAL 4.1's own bytes for the object.
//
// spec.json: {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 49], "scale": 1073741824,
//             "vector": [...], "coefficients": [[...], ...], "rotation_steps": [...], "relin_keys": false}
// "scale" may be given as "scale_bits" instead.

import fs from 'node:fs'
import path from 'node:path'
import SEAL from 'node-seal'

import { mod, modPow, rint } from '../src/arith.js'

const HEADER = 16
const MAGIC = 0xa15e
const CT_PREFIX = 32 + 1 + 8 * 5 // parms_id, NTT flag, size, N, primes, scale, correction factor

function fail(message) {
  process.stderr.write(`seal41-fixtures: ${message}\n`)
  process.exit(1)
}

function readSpec() {
  let spec
  try {
    spec = JSON.parse(fs.readFileSync(0, 'utf8'))
  } catch (error) {
    fail(`the spec on standard input is not JSON: ${error.message}`)
  }
  if (!Number.isInteger(spec.poly_modulus_degree) || !Array.isArray(spec.coeff_mod_bit_sizes)) {
    fail('the spec needs poly_modulus_degree and coeff_mod_bit_sizes')
  }
  return spec
}

function scaleOf(spec) {
  if (typeof spec.scale === 'number') return spec.scale
  if (Number.isInteger(spec.scale_bits)) return 2 ** spec.scale_bits
  fail('the spec needs scale (or scale_bits)')
}

function setUp(seal, spec) {
  const parms = new seal.EncryptionParameters(seal.SchemeType.ckks)
  parms.setPolyModulusDegree(spec.poly_modulus_degree)
  parms.setCoeffModulus(seal.CoeffModulus.Create(spec.poly_modulus_degree, Int32Array.from(spec.coeff_mod_bit_sizes)))
  const context = new seal.SEALContext(parms, true, seal.SecLevelType.tc128)
  if (!context.parametersSet()) fail(`SEAL refuses the parameters ${JSON.stringify(spec)}`)
  const none = parms.saveToArray(seal.ComprModeType.none)
  return { parms, context, version: [none[3], none[4]] }
}

const u64 = (view, offset) => view.getBigUint64(offset, true)

// node-seal's loaders take a plain Uint8Array, not a Buffer.
const readBytes = (file) => new Uint8Array(fs.readFileSync(file))

// SEAL's C++ exceptions arrive as WebAssembly exceptions whose message is [type, what].
const describe = (error) => (Array.isArray(error?.message) ? error.message.join(': ') : (error?.message ?? String(error)))

function header(bytes, offset, version, size) {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, HEADER)
  view.setUint16(0, MAGIC, true)
  view.setUint8(2, HEADER)
  view.setUint8(3, version[0])
  view.setUint8(4, version[1])
  view.setUint8(5, 0) // uncompressed
  view.setUint16(6, 0, true)
  view.setBigUint64(8, BigInt(size), true)
}

// A ciphertext serialized as SEAL does, uncompressed: header, prefix, then its coefficients as a
// nested DynArray object (header, element count, size x primes x N uint64 values).
function ciphertextBytes(version, parmsId, { ntt, scale, polys }) {
  const size = polys.length
  const primes = polys[0].length
  const n = polys[0][0].length
  const count = size * primes * n
  const total = HEADER + CT_PREFIX + HEADER + 8 + 8 * count
  const bytes = new Uint8Array(total)
  const view = new DataView(bytes.buffer)
  header(bytes, 0, version, total)
  parmsId.forEach((word, i) => view.setBigUint64(HEADER + 8 * i, word, true))
  view.setUint8(HEADER + 32, ntt ? 1 : 0)
  view.setBigUint64(HEADER + 33, BigInt(size), true)
  view.setBigUint64(HEADER + 41, BigInt(n), true)
  view.setBigUint64(HEADER + 49, BigInt(primes), true)
  view.setFloat64(HEADER + 57, scale, true)
  view.setBigUint64(HEADER + 65, 1n, true)
  const inner = HEADER + CT_PREFIX
  header(bytes, inner, version, HEADER + 8 + 8 * count)
  view.setBigUint64(inner + HEADER, BigInt(count), true)
  let offset = inner + HEADER + 8
  for (const poly of polys) {
    for (const residues of poly) {
      for (const value of residues) {
        view.setBigUint64(offset, value, true)
        offset += 8
      }
    }
  }
  return bytes
}

// An NTT-form CKKS plaintext serialized as SEAL does: header, parms_id, coefficient count, scale, DynArray.
function plaintextBytes(version, parmsId, scale, residues) {
  const count = residues.length * residues[0].length
  const total = HEADER + 32 + 8 + 8 + HEADER + 8 + 8 * count
  const bytes = new Uint8Array(total)
  const view = new DataView(bytes.buffer)
  header(bytes, 0, version, total)
  parmsId.forEach((word, i) => view.setBigUint64(HEADER + 8 * i, word, true))
  view.setBigUint64(HEADER + 32, BigInt(count), true)
  view.setFloat64(HEADER + 40, scale, true)
  const inner = HEADER + 48
  header(bytes, inner, version, HEADER + 8 + 8 * count)
  view.setBigUint64(inner + HEADER, BigInt(count), true)
  let offset = inner + HEADER + 8
  for (const row of residues) {
    for (const value of row) {
      view.setBigUint64(offset, value, true)
      offset += 8
    }
  }
  return bytes
}

function firstLevel(context) {
  const data = context.firstContextData()
  const moduli = []
  const vector = data.parms().coeffModulus()
  for (let i = 0; i < vector.size(); i++) moduli.push(vector.get(i).value())
  return { parmsId: Array.from(context.firstParmsId().values()), moduli, n: data.parms().polyModulusDegree() }
}

// The Python SDK's coefficient encoding (engine/coefficients.py CoefficientCodec.encode): values[i] times
// the scale, rounded, in coefficient i, every other coefficient zero, carried into NTT form by SEAL's own
// transform as the first polynomial of a ciphertext built byte by byte.
function encodeCoefficients(seal, setup, values, scale) {
  const { context, version } = setup
  const { parmsId, moduli, n } = firstLevel(context)
  if (values.length > n) fail(`${values.length} values do not fit ${n} coefficients`)
  const scaled = values.map((v) => rint(v * scale))
  if (scaled.some((c) => !(Math.abs(c) < 2 ** 62))) fail('values times the scale exceed 2^62')
  const residues = moduli.map((q) => {
    const row = new Array(n).fill(0n)
    scaled.forEach((c, i) => {
      row[i] = mod(BigInt(c), q)
    })
    return row
  })
  // The second polynomial only keeps SEAL from refusing a transparent ciphertext.
  const ones = moduli.map(() => new Array(n).fill(1n))
  const carrier = new seal.Ciphertext()
  carrier.loadFromArray(
    context,
    ciphertextBytes(version, parmsId, { ntt: false, scale: 1.0, polys: [residues, ones] })
  )
  new seal.Evaluator(context).cipherTransformToNttInplace(carrier)
  const saved = carrier.saveToArray(seal.ComprModeType.none)
  const view = new DataView(saved.buffer, saved.byteOffset, saved.byteLength)
  const first = HEADER + CT_PREFIX + HEADER + 8
  const ntt = moduli.map((_, p) => Array.from({ length: n }, (_, i) => u64(view, first + 8 * (p * n + i))))
  const plain = new seal.Plaintext()
  plain.loadFromArray(context, plaintextBytes(version, parmsId, scale, ntt))
  return plain
}

// The constant coefficient of a one-prime NTT-form plaintext, centred and divided by its scale: the sum of
// the NTT values is N times the constant coefficient (engine/coefficients.py CoefficientCodec.constant).
function constantCoefficient(seal, context, plain) {
  const saved = plain.saveToArray(seal.ComprModeType.none)
  const view = new DataView(saved.buffer, saved.byteOffset, saved.byteLength)
  const moduli = []
  const vector = context.getContextData(plain.parmsId()).parms().coeffModulus()
  for (let i = 0; i < vector.size(); i++) moduli.push(vector.get(i).value())
  if (moduli.length !== 1) fail('reading a coefficient needs a single-prime level')
  const q = moduli[0]
  const count = Number(u64(view, HEADER + 32))
  const scale = view.getFloat64(HEADER + 40, true)
  const data = HEADER + 48 + HEADER + 8
  let sum = 0n
  for (let i = 0; i < count; i++) sum += u64(view, data + 8 * i)
  let value = (mod(sum, q) * modPow(BigInt(count), q - 2n, q)) % q
  if (value > q / 2n) value -= q
  return Number(value) / scale
}

function write(dir, name, bytes, files) {
  fs.writeFileSync(path.join(dir, name), bytes)
  files.push(name)
}

function keys(seal, spec, dir) {
  fs.mkdirSync(dir, { recursive: true })
  const setup = setUp(seal, spec)
  const { parms, context } = setup
  const modes = { none: seal.ComprModeType.none, zlib: seal.ComprModeType.zlib, zstd: seal.ComprModeType.zstd }
  const files = []
  const keygen = new seal.KeyGenerator(context)
  const secret = keygen.secretKey()
  write(dir, 'secret_key.bin', secret.saveToArray(modes.none), files)
  write(dir, 'parms.bin', parms.saveToArray(modes.none), files)
  // SEAL's seeded public key: an encryption of zero at the key level whose second polynomial is a seed.
  const publicKey = keygen.createPublicKeySerializable()
  for (const mode of ['none', 'zstd']) write(dir, `public_key.${mode}.bin`, publicKey.saveToArray(modes[mode]), files)
  if (spec.relin_keys) {
    const relin = keygen.createRelinKeysSerializable()
    for (const mode of ['none', 'zlib', 'zstd']) write(dir, `relin_keys.${mode}.bin`, relin.saveToArray(modes[mode]), files)
  }
  if (Array.isArray(spec.rotation_steps) && spec.rotation_steps.length) {
    const galois = keygen.createGaloisKeysSerializableWithSteps(Int32Array.from(spec.rotation_steps))
    for (const mode of ['none', 'zlib', 'zstd']) {
      write(dir, `galois_keys.${mode}.bin`, galois.saveToArray(modes[mode]), files)
    }
  }
  // The Encryptor needs a public key; every ciphertext here is symmetric (seeded when serializable).
  const encryptor = new seal.Encryptor(context, keygen.createPublicKey(), secret)
  if (Array.isArray(spec.vector)) {
    const plain = new seal.Plaintext()
    new seal.CKKSEncoder(context).encode(Float64Array.from(spec.vector), scaleOf(spec), plain)
    const seeded = encryptor.encryptSymmetricSerializable(plain)
    for (const mode of ['none', 'zlib', 'zstd']) write(dir, `ciphertext.seeded.${mode}.bin`, seeded.saveToArray(modes[mode]), files)
    const full = new seal.Ciphertext()
    encryptor.encryptSymmetric(plain, full)
    for (const mode of ['none', 'zstd']) write(dir, `ciphertext.full.${mode}.bin`, full.saveToArray(modes[mode]), files)
  }
  if (Array.isArray(spec.coefficients)) {
    spec.coefficients.forEach((row, i) => {
      const plain = encodeCoefficients(seal, setup, row, scaleOf(spec))
      write(dir, `coefficients.${i}.bin`, encryptor.encryptSymmetricSerializable(plain).saveToArray(modes.none), files)
    })
  }
  const manifest = {
    seal_version: setup.version,
    first_parms_id: Array.from(context.firstParmsId().values(), String),
    key_parms_id: Array.from(context.keyParmsId().values(), String),
    files,
  }
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 1))
}

function decrypt(seal, spec, secretPath, ciphertextPaths) {
  const { context } = setUp(seal, spec)
  const secret = new seal.SecretKey()
  secret.loadFromArray(context, readBytes(secretPath))
  const decryptor = new seal.Decryptor(context, secret)
  const encoder = new seal.CKKSEncoder(context)
  const results = ciphertextPaths.map((file) => {
    const bytes = readBytes(file)
    const ct = new seal.Ciphertext()
    try {
      ct.loadFromArray(context, bytes)
    } catch (error) {
      fail(`SEAL ${bytes[3]}.${bytes[4]} bytes in ${path.basename(file)} do not load: ${describe(error)}`)
    }
    const plain = new seal.Plaintext()
    decryptor.decrypt(ct, plain)
    let values
    if (spec.encoding === 'coefficients') {
      values = [constantCoefficient(seal, context, plain)]
    } else {
      values = Array.from(encoder.decodeFloat64(plain)).slice(0, spec.count ?? undefined)
    }
    return { seal_version: `${bytes[3]}.${bytes[4]}`, scale: ct.scale(), values }
  })
  process.stdout.write(JSON.stringify({ results }))
}

function resave(seal, spec, triples) {
  const { context } = setUp(seal, spec)
  const classes = {
    ciphertext: seal.Ciphertext,
    public_key: seal.PublicKey,
    relin_keys: seal.RelinKeys,
    galois_keys: seal.GaloisKeys,
    secret_key: seal.SecretKey,
    plaintext: seal.Plaintext,
  }
  for (let i = 0; i < triples.length; i += 3) {
    const [kind, input, output] = triples.slice(i, i + 3)
    if (!(kind in classes)) fail(`unknown kind ${kind}; one of ${Object.keys(classes).join(', ')}`)
    const object = new classes[kind]()
    try {
      object.loadFromArray(context, readBytes(input))
    } catch (error) {
      fail(`${input} does not load as ${kind}: ${describe(error)}`)
    }
    fs.writeFileSync(output, object.saveToArray(seal.ComprModeType.none))
  }
}

const [mode, ...args] = process.argv.slice(2)
const usage =
  'usage: seal41-fixtures.mjs keys OUTDIR | decrypt SECRET_KEY CIPHERTEXT... | resave KIND INPUT OUTPUT... (spec JSON on stdin)'
const spec = mode ? readSpec() : fail(usage)
const seal = await SEAL()
if (mode === 'keys' && args.length === 1) keys(seal, spec, args[0])
else if (mode === 'decrypt' && args.length >= 2) decrypt(seal, spec, args[0], args.slice(1))
else if (mode === 'resave' && args.length >= 3 && args.length % 3 === 0) resave(seal, spec, args)
else fail(usage)
