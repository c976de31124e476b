// Plaintext pre- and post-processing the client applies around encrypted evaluation
// (client/postprocess.py): standardization before encrypting, sigmoid/softmax and labels after decrypting.

import { InputError } from './errors.js'

/**
 * @typedef {object} Preprocess
 * @property {string} [type] "identity" (default) or "standardize"
 * @property {number[]} [mean]
 * @property {number[]} [scale]
 */

/**
 * @typedef {object} Postprocess
 * @property {string} [type] "identity" (regression), "sigmoid", "softmax" or "argmax"
 * @property {Array<number | string>} [classes]
 * @property {string[]} [class_names]
 * @property {string[]} [output_names]
 * @property {number} [threshold]
 */

/**
 * Apply the model's preprocessing to raw rows.
 * @param {number[][]} rows
 * @param {Preprocess} spec
 * @returns {number[][]}
 */
export function preprocess(rows, spec) {
  const kind = spec.type ?? 'identity'
  if (kind === 'identity') return rows
  if (kind === 'standardize') {
    const mean = spec.mean ?? []
    const scale = spec.scale ?? []
    return rows.map((row) => row.map((x, j) => (x - mean[j]) / scale[j]))
  }
  throw new InputError(`this SDK does not know the preprocessing ${JSON.stringify(kind)}; upgrade the client`)
}

/** @param {number} z */
export const sigmoid = (z) => 0.5 * (1 + Math.tanh(0.5 * z)) // tanh form: no overflow for large |z|

/** @param {number[]} z */
export function softmax(z) {
  const top = Math.max(...z)
  const e = z.map((v) => Math.exp(v - top))
  const sum = e.reduce((a, b) => a + b, 0)
  return e.map((v) => v / sum)
}

/**
 * Class probabilities (rows x classes) from raw scores (rows x outputs).
 * @param {number[][]} scores
 * @param {Postprocess} spec
 * @returns {number[][]}
 */
export function probabilities(scores, spec) {
  const kind = spec.type ?? 'identity'
  if (kind === 'sigmoid') {
    return scores.map((s) => {
      const p = sigmoid(s[0])
      return [1 - p, p]
    })
  }
  if (kind === 'softmax' || kind === 'argmax') return scores.map(softmax)
  throw new InputError('this model is a regression: it has no class probabilities')
}

/** @param {number[]} values first index of the largest value (numpy's argmax) */
function argmax(values) {
  let best = 0
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i
  return best
}

/**
 * Labels for classifiers, values for regressions (one number per row when the model has one output).
 * @param {number[][]} scores
 * @param {Postprocess} spec
 * @returns {Array<number | string> | number[][]}
 */
export function labels(scores, spec) {
  const kind = spec.type ?? 'identity'
  if (kind === 'identity') return scores[0]?.length === 1 ? scores.map((s) => s[0]) : scores
  const outputs = scores[0]?.length ?? 1
  const classes = spec.classes ?? Array.from({ length: Math.max(2, outputs) }, (_, i) => i)
  if (kind === 'sigmoid') {
    const threshold = spec.threshold ?? 0.5
    return scores.map((s) => classes[sigmoid(s[0]) >= threshold ? 1 : 0])
  }
  return scores.map((s) => classes[argmax(s)])
}
