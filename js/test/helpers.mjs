// Shared by the tests that talk to a real server: its URL (HESERVE_URL), the API key when it has
// auth on (HESERVE_API_KEY), reproducible rows within each model's input ranges, and closeness.

import assert from 'node:assert/strict'

export const URL = process.env.HESERVE_URL ?? ''
export const API_KEY = process.env.HESERVE_API_KEY || undefined
export const NO_SERVER = URL ? false : 'HESERVE_URL is not set: start a server and point HESERVE_URL at it (tests/test_js_sdk.py does)'

/** A small seeded PRNG (mulberry32): the same rows on every run. @param {number} seed */
export function rng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * `count` raw rows uniform within the model's published input ranges.
 * @param {import('../src/heserve.js').RemoteModel} model
 * @param {number} count
 * @param {number} [seed]
 */
export function rowsFor(model, count, seed = 1) {
  const random = rng(seed)
  const { low, high } = /** @type {NonNullable<typeof model.inputRanges>} */ (model.inputRanges)
  return Array.from({ length: count }, () => low.map((l, j) => l + random() * (high[j] - l)))
}

/**
 * Encrypted outputs against the server's plaintext outputs: |a - b| <= 1e-2 * max(1, largest |b|).
 * @param {number[][]} actual
 * @param {number[][]} expected
 * @param {string} what
 * @returns {number} the largest error
 */
export function assertClose(actual, expected, what) {
  assert.equal(actual.length, expected.length, `${what}: row count`)
  const scale = Math.max(1, ...expected.flat().map(Math.abs))
  let worst = 0
  actual.forEach((row, i) => {
    assert.equal(row.length, expected[i].length, `${what}: outputs of row ${i}`)
    row.forEach((v, k) => {
      const error = Math.abs(v - expected[i][k])
      worst = Math.max(worst, error)
      assert.ok(error <= 1e-2 * scale, `${what}: row ${i} output ${k}: ${v} vs plaintext ${expected[i][k]}`)
    })
  })
  return worst
}

/** A fetch that records the bodies it sends. */
export function recordingFetch() {
  /** @type {Array<{method: string, url: string, body: Uint8Array | null}>} */
  const sent = []
  /** @type {typeof fetch} */
  const f = async (input, init = {}) => {
    const body = init.body instanceof Uint8Array ? init.body : null
    sent.push({ method: init.method ?? 'GET', url: String(input), body })
    return fetch(input, init)
  }
  return { fetch: f, sent }
}
