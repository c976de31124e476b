// Packing feature rows into CKKS slots for each layout (client/encoding.py, engine/packing.py).

import { InputError } from './errors.js'

/**
 * The slot vectors of one row: `period` features per ciphertext, zero-padded and tiled across every slot.
 * The server sums each input over the rotations by multiples of the period, and reads the average of
 * the periods: the tiling is what keeps the row's own values.
 * @param {ArrayLike<number>} row
 * @param {number} period
 * @param {number} ciphertexts
 * @param {number} slots
 * @returns {Float64Array[]}
 */
export function tileFeatures(row, period, ciphertexts, slots) {
  if (period < 1 || slots % period) throw new InputError(`period ${period} does not divide ${slots} slots`)
  if (row.length > period * ciphertexts) {
    throw new InputError(`${row.length} features do not fit ${ciphertexts} ciphertexts of period ${period}`)
  }
  const out = []
  for (let mu = 0; mu < ciphertexts; mu++) {
    const vector = new Float64Array(slots)
    const first = mu * period
    const last = Math.min(row.length, first + period)
    for (let start = 0; start < slots; start += period) {
      for (let j = first; j < last; j++) vector[start + j - first] = row[j]
    }
    out.push(vector)
  }
  return out
}

/**
 * The slot vectors of one row's ciphertexts in a slot-encoded single layout.
 * @param {ArrayLike<number>} row
 * @param {import('./spec.js').LayoutSpec} layout
 * @param {number} slots
 */
export function packSingle(row, layout, slots) {
  if (layout.packing) return tileFeatures(row, layout.packing.period, layout.packing.ciphertexts, slots)
  return tileFeatures(row, layout.period, 1, slots)
}

/**
 * Column j of up to `capacity` rows: one vector per feature (batch layout).
 * @param {number[][]} rows
 * @param {number} capacity
 * @returns {Float64Array[]}
 */
export function packBatch(rows, capacity) {
  if (rows.length > capacity) throw new InputError(`${rows.length} rows do not fit ${capacity} slots`)
  const features = rows[0]?.length ?? 0
  return Array.from({ length: features }, (_, j) => Float64Array.from(rows, (row) => row[j]))
}
