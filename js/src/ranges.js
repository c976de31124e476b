// The SDK's local check that inputs resemble what a model was trained on (client/ranges.py). Nothing of
// it reaches the server. A model publishing `input_ranges` (each raw feature's training min and max)
// lets the SDK notice inputs that would come back as confident, wrong predictions: features already
// standardized by the caller (the SDK standardizes them again), features in other units, columns in
// another order. The check only warns, once per model and client.

const FAR = 0.5
const MOSTLY_OUTSIDE = 0.5
const FITS = 0.1
const CROWDED = 0.25
const NAMED_FEATURES = 5

/**
 * What the check found in one call's inputs.
 * @typedef {object} RangeFinding
 * @property {number} total values checked
 * @property {number} far values far outside their feature's range
 * @property {number} outside values outside their feature's range
 * @property {number[]} features features with a value far outside (looking standardized: outside)
 * @property {boolean} standardized the inputs look already standardized
 * @property {boolean} crowded ... because they crowd into a corner of the ranges
 * @property {string} message
 */

/** @param {number[]} values */
function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/**
 * @param {number[][]} x
 * @param {number[]} low
 * @param {number[]} high
 * @param {number[]} width
 */
function reading(x, low, high, width) {
  const outside = x.map((row) => row.map((v, j) => v < low[j] || v > high[j]))
  const far = x.map((row) => row.map((v, j) => v < low[j] - FAR * width[j] || v > high[j] + FAR * width[j]))
  let min = Infinity
  let max = -Infinity
  for (const row of x) {
    row.forEach((v, j) => {
      const position = (v - low[j]) / width[j]
      if (position < min) min = position
      if (position > max) max = position
    })
  }
  const count = (/** @type {boolean[][]} */ m) => m.reduce((sum, row) => sum + row.filter(Boolean).length, 0)
  return { outside, far, spread: max - min, outsideCount: count(outside), farCount: count(far), total: x.length * low.length }
}

/** @param {boolean[][]} mask @returns {number[]} the columns with any true */
const columns = (mask) => (mask[0] ?? []).map((_, j) => j).filter((j) => mask.some((row) => row[j]))

/** Each raw feature's training min and max, as a model's metadata publishes them. */
export class InputRanges {
  /** @param {number[]} low @param {number[]} high */
  constructor(low, high) {
    this.low = low
    this.high = high
  }

  /**
   * @param {unknown} value metadata `parameters.input_ranges`
   * @param {number} nFeatures
   * @returns {InputRanges | null} null when the model publishes no usable ranges
   */
  static fromMetadata(value, nFeatures) {
    const v = /** @type {any} */ (value)
    if (!v || typeof v !== 'object' || !Array.isArray(v.min) || !Array.isArray(v.max)) return null
    const { min: low, max: high } = v
    if (low.length !== nFeatures || high.length !== nFeatures || nFeatures === 0) return null
    const finite = (/** @type {unknown} */ x) => typeof x === 'number' && Number.isFinite(x)
    if (!low.every(finite) || !high.every(finite) || low.some((/** @type {number} */ l, /** @type {number} */ j) => l > high[j])) return null
    return new InputRanges(low, high)
  }

  widths() {
    const width = this.high.map((h, j) => h - this.low[j])
    const varied = width.filter((w) => w > 0)
    const floor = varied.length ? median(varied) : 1
    return width.map((w) => Math.max(w, floor))
  }

  /**
   * What is wrong with raw rows, or null when they look like training rows.
   * @param {number[][]} x
   * @param {import('./postprocess.js').Preprocess} preprocess
   * @param {string} model
   * @param {string[]} inputNames
   * @returns {RangeFinding | null}
   */
  check(x, preprocess, model, inputNames) {
    const width = this.widths()
    const raw = reading(x, this.low, this.high, width)
    let standardized = null
    const { mean, scale } = preprocess
    if (preprocess.type === 'standardize' && mean?.length === this.low.length && scale?.length === this.low.length) {
      standardized = reading(x.map((row) => row.map((v, j) => v * scale[j] + mean[j])), this.low, this.high, width)
    }
    let how = null
    if (standardized && standardized.farCount === 0 && standardized.outsideCount / standardized.total <= FITS) {
      if (raw.outsideCount / raw.total >= MOSTLY_OUTSIDE) how = 'outside'
      else if (standardized.spread >= CROWDED && raw.spread <= CROWDED * standardized.spread) how = 'crowded'
    }
    let finding
    if (how) {
      const features = how === 'crowded' ? [] : columns(raw.outside)
      finding = { total: raw.total, far: raw.farCount, outside: raw.outsideCount, features, standardized: true, crowded: how === 'crowded' }
    } else if (raw.farCount) {
      finding = { total: raw.total, far: raw.farCount, outside: raw.outsideCount, features: columns(raw.far), standardized: false, crowded: false }
    } else {
      return null
    }
    return { ...finding, message: message(finding, model, inputNames, preprocess.type ?? 'identity') }
  }
}

/**
 * @param {Omit<RangeFinding, 'message'>} f
 * @param {string} model
 * @param {string[]} inputNames
 * @param {string} preprocessType
 */
function message(f, model, inputNames, preprocessType) {
  const names = f.features.slice(0, NAMED_FEATURES).map((j) => inputNames[j] ?? `x${j}`)
  const listed = names.join(', ') + (f.features.length > NAMED_FEATURES ? ', ...' : '')
  const where = `${f.features.length} feature${f.features.length !== 1 ? 's' : ''}: ${listed}`
  if (f.standardized) {
    const found = f.crowded
      ? 'they crowd into a small corner of the ranges the model was trained on, where standardized values lie'
      : `${f.outside} of ${f.total} values lie outside the ranges the model was trained on (${where}), where standardized values fit them`
    return (
      `model '${model}': the inputs look already standardized: ${found}. Did you pass preprocessed features? ` +
      "Pass the raw features: the SDK applies the model's standardization itself before encrypting, so it would be applied twice."
    )
  }
  const hint =
    preprocessType === 'standardize'
      ? 'Did you pass preprocessed features, or features in other units or another column order? Pass the raw features, ' +
        "in the order of model.inputNames: the SDK applies the model's standardization itself."
      : 'This model applies no preprocessing of its own: send the features exactly as they were at training ' +
        '(same units, same scaling, the order of model.inputNames).'
  return (
    `model '${model}': ${f.far} of ${f.total} input values (${where}) lie far outside the ranges the model was trained on ` +
    `(more than half the range beyond its min or max); its predictions for them are extrapolations. ${hint}`
  )
}
