// Integer helpers the SDK's coefficient encoding needs (and js/tools/seal41-fixtures.mjs reuses).

/** numpy's rint: halves round to even, as the Python SDK rounds. @param {number} x */
export function rint(x) {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/** @param {bigint} a @param {bigint} q */
export const mod = (a, q) => ((a % q) + q) % q

/** @param {bigint} base @param {bigint} exponent @param {bigint} q */
export function modPow(base, exponent, q) {
  let result = 1n
  base = mod(base, q)
  while (exponent > 0n) {
    if (exponent & 1n) result = (result * base) % q
    base = (base * base) % q
    exponent >>= 1n
  }
  return result
}
