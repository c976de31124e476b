// BLAKE2b (RFC 7693) with a key, a salt and a personalization, as Python's hashlib.blake2b computes it.
// Pure JavaScript on pairs of 32-bit words (no BigInt in the inner loop): the SDK hashes a few
// kilobytes per ciphertext for its binding tags, and must load from a static folder with no
// dependency of its own.

const BLOCK = 128

// The initialisation vector, as little-endian pairs of 32-bit words (low word first).
const IV = new Uint32Array([
  0xf3bcc908, 0x6a09e667, 0x84caa73b, 0xbb67ae85, 0xfe94f82b, 0x3c6ef372, 0x5f1d36f1, 0xa54ff53a,
  0xade682d1, 0x510e527f, 0x2b3e6c1f, 0x9b05688c, 0xfb41bd6b, 0x1f83d9ab, 0x137e2179, 0x5be0cd19,
])

// Message word schedule, 12 rounds (rounds 10 and 11 repeat 0 and 1), pre-doubled to index word pairs.
const SIGMA = new Uint8Array(
  [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
    11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
    7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
    9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
    2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
    12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
    13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
    6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
    10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
  ].map((i) => 2 * i)
)

const v = new Uint32Array(32)
const m = new Uint32Array(32)

/** v[a] += v[b], 64-bit. @param {number} a @param {number} b */
function add64(a, b) {
  const lo = v[a] + v[b]
  let hi = v[a + 1] + v[b + 1]
  if (lo >= 0x100000000) hi++
  v[a] = lo
  v[a + 1] = hi
}

/** v[a] += m[i], 64-bit. @param {number} a @param {number} i */
function add64m(a, i) {
  const lo = v[a] + m[i]
  let hi = v[a + 1] + m[i + 1]
  if (lo >= 0x100000000) hi++
  v[a] = lo
  v[a + 1] = hi
}

/** BLAKE2b's G on the word pairs at a, b, c, d with message words x, y. @param {number} a @param {number} b
 * @param {number} c @param {number} d @param {number} x @param {number} y */
function mix(a, b, c, d, x, y) {
  add64(a, b)
  add64m(a, x)
  // d = (d ^ a) >>> 32
  let lo = v[d] ^ v[a]
  let hi = v[d + 1] ^ v[a + 1]
  v[d] = hi
  v[d + 1] = lo
  add64(c, d)
  // b = (b ^ c) >>> 24
  lo = v[b] ^ v[c]
  hi = v[b + 1] ^ v[c + 1]
  v[b] = (lo >>> 24) ^ (hi << 8)
  v[b + 1] = (hi >>> 24) ^ (lo << 8)
  add64(a, b)
  add64m(a, y)
  // d = (d ^ a) >>> 16
  lo = v[d] ^ v[a]
  hi = v[d + 1] ^ v[a + 1]
  v[d] = (lo >>> 16) ^ (hi << 16)
  v[d + 1] = (hi >>> 16) ^ (lo << 16)
  add64(c, d)
  // b = (b ^ c) >>> 63
  lo = v[b] ^ v[c]
  hi = v[b + 1] ^ v[c + 1]
  v[b] = (hi >>> 31) ^ (lo << 1)
  v[b + 1] = (lo >>> 31) ^ (hi << 1)
}

/**
 * @param {Uint32Array} h chained state (16 words)
 * @param {Uint8Array} block 128 bytes
 * @param {number} counter bytes hashed so far, this block included
 * @param {boolean} last
 */
function compress(h, block, counter, last) {
  for (let i = 0; i < 16; i++) {
    v[i] = h[i]
    v[i + 16] = IV[i]
  }
  v[24] ^= counter >>> 0
  v[25] ^= Math.floor(counter / 0x100000000)
  if (last) {
    v[28] = ~v[28]
    v[29] = ~v[29]
  }
  for (let i = 0; i < 32; i++) {
    m[i] = block[4 * i] ^ (block[4 * i + 1] << 8) ^ (block[4 * i + 2] << 16) ^ (block[4 * i + 3] << 24)
  }
  for (let r = 0; r < 12; r++) {
    const s = r * 16
    mix(0, 8, 16, 24, SIGMA[s], SIGMA[s + 1])
    mix(2, 10, 18, 26, SIGMA[s + 2], SIGMA[s + 3])
    mix(4, 12, 20, 28, SIGMA[s + 4], SIGMA[s + 5])
    mix(6, 14, 22, 30, SIGMA[s + 6], SIGMA[s + 7])
    mix(0, 10, 20, 30, SIGMA[s + 8], SIGMA[s + 9])
    mix(2, 12, 22, 24, SIGMA[s + 10], SIGMA[s + 11])
    mix(4, 14, 16, 26, SIGMA[s + 12], SIGMA[s + 13])
    mix(6, 8, 18, 28, SIGMA[s + 14], SIGMA[s + 15])
  }
  for (let i = 0; i < 16; i++) h[i] ^= v[i] ^ v[i + 16]
}

/** @param {Uint8Array} bytes @param {number} offset */
const word = (bytes, offset) =>
  (bytes[offset] ^ (bytes[offset + 1] << 8) ^ (bytes[offset + 2] << 16) ^ (bytes[offset + 3] << 24)) >>> 0

/**
 * An incremental BLAKE2b hash.
 *
 * @example
 *   const tag = new Blake2b({ digestSize: 16, key, person: utf8('heserve-bind') }).update(data).hex()
 */
export class Blake2b {
  /**
   * @param {{digestSize?: number, key?: Uint8Array, salt?: Uint8Array, person?: Uint8Array}} [options]
   *   digestSize 1..64 bytes (default 64); key up to 64 bytes; salt and person up to 16 bytes each,
   *   zero-padded as hashlib does.
   */
  constructor({ digestSize = 64, key = new Uint8Array(0), salt = new Uint8Array(0), person = new Uint8Array(0) } = {}) {
    if (!Number.isInteger(digestSize) || digestSize < 1 || digestSize > 64) throw new RangeError('digestSize must be 1..64')
    if (key.length > 64) throw new RangeError('a BLAKE2b key has at most 64 bytes')
    if (salt.length > 16) throw new RangeError('a BLAKE2b salt has at most 16 bytes')
    if (person.length > 16) throw new RangeError('a BLAKE2b personalization has at most 16 bytes')
    this.digestSize = digestSize
    this.h = new Uint32Array(IV)
    this.h[0] ^= 0x01010000 ^ (key.length << 8) ^ digestSize
    const padded = new Uint8Array(32)
    padded.set(salt, 0)
    padded.set(person, 16)
    for (let i = 0; i < 8; i++) this.h[8 + i] ^= word(padded, 4 * i)
    this.buffer = new Uint8Array(BLOCK)
    this.filled = 0
    this.counter = 0
    this.done = false
    if (key.length) {
      const block = new Uint8Array(BLOCK)
      block.set(key)
      this.update(block)
    }
  }

  /** @param {Uint8Array} data @returns {this} */
  update(data) {
    if (this.done) throw new Error('BLAKE2b: update after digest')
    let offset = 0
    while (offset < data.length) {
      // A full buffer is compressed only once more data follows: the last block is flagged as last.
      if (this.filled === BLOCK) {
        this.counter += BLOCK
        compress(this.h, this.buffer, this.counter, false)
        this.filled = 0
      }
      const take = Math.min(BLOCK - this.filled, data.length - offset)
      this.buffer.set(data.subarray(offset, offset + take), this.filled)
      this.filled += take
      offset += take
    }
    return this
  }

  /** @returns {Uint8Array} */
  digest() {
    if (!this.done) {
      this.counter += this.filled
      this.buffer.fill(0, this.filled)
      compress(this.h, this.buffer, this.counter, true)
      this.done = true
    }
    const out = new Uint8Array(this.digestSize)
    for (let i = 0; i < this.digestSize; i++) out[i] = this.h[i >> 2] >>> (8 * (i & 3))
    return out
  }

  /** @returns {string} lowercase hex, as hashlib's hexdigest */
  hex() {
    return toHex(this.digest())
  }
}

/** @param {Uint8Array} bytes @returns {string} */
export function toHex(bytes) {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}

/** @param {string} hex @returns {Uint8Array} */
export function fromHex(hex) {
  if (hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) throw new TypeError('not a hex string')
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  return out
}
