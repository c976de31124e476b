// Compact rotation keys (engine/rotations.py): Galois keys for a few of a model's rotation steps, the
// server composing every other step from them, each from at most MAX_HOPS registered rotations. Four
// keys instead of twelve: ~3.7 MB to upload instead of ~9 MB for a 4,096-slot network, for ~1.8x the
// server's time per single-layout row.

import { InputError } from './errors.js'

/** The server composes each step of at most this many registered rotations. */
export const MAX_HOPS = 4

/**
 * @param {number[]} steps
 * @param {number} slots
 * @returns {number[]} distinct non-zero steps mod slots, ascending
 */
function normalized(steps, slots) {
  return [...new Set(steps.map((s) => ((s % slots) + slots) % slots))].filter((s) => s !== 0).sort((a, b) => a - b)
}

/**
 * For every needed step, a shortest list of available steps adding up to it (mod slots); null when
 * some step takes more than maxHops.
 * @param {number[]} needed
 * @param {number[]} available
 * @param {number} slots
 * @param {number} [maxHops]
 * @returns {Map<number, number[]> | null}
 */
export function routes(needed, available, slots, maxHops = MAX_HOPS) {
  const generators = normalized(available, slots).reverse()
  /** @type {Map<number, number[]>} */
  const paths = new Map([[0, []]])
  let frontier = [0]
  for (let hop = 0; hop < maxHops; hop++) {
    /** @type {number[]} */
    const following = []
    for (const state of frontier) {
      for (const step of generators) {
        const next = (state + step) % slots
        if (!paths.has(next)) {
          paths.set(next, [.../** @type {number[]} */ (paths.get(state)), step])
          following.push(next)
        }
      }
    }
    frontier = following
  }
  /** @type {Map<number, number[]>} */
  const out = new Map()
  for (const step of normalized(needed, slots)) {
    const path = paths.get(step)
    if (!path) return null
    out.set(step, path)
  }
  return out
}

/** The count of compactSteps that picks as few keys as compose every step. */
export const FEWEST = 'fewest'

/**
 * The `count` needed steps whose keys compose all of them in the fewest rotations per row, weighing
 * each step by `uses` (the spec's rotation_uses; 1 where absent); count 'fewest': the smallest count
 * that can.
 * @param {number[]} needed
 * @param {number} slots
 * @param {number | 'fewest'} count
 * @param {Record<number, number>} [uses]
 * @returns {number[]}
 */
export function compactSteps(needed, slots, count, uses = {}) {
  const steps = normalized(needed, slots)
  /** @type {Record<number, number>} */
  const weight = {}
  for (const [step, n] of Object.entries(uses)) weight[((Number(step) % slots) + slots) % slots] = n
  if (count === FEWEST) {
    for (let fewest = 1; fewest < steps.length; fewest++) {
      try {
        return compactSteps(steps, slots, fewest, weight)
      } catch (error) {
        if (!(error instanceof InputError)) throw error
      }
    }
    return steps
  }
  if (!Number.isInteger(count) || count < 1) {
    throw new InputError(`rotationKeys must be a positive integer or '${FEWEST}', got ${JSON.stringify(count)}`)
  }
  if (count >= steps.length) return steps
  /** @type {{score: number[], subset: number[]} | null} */
  let best = null
  for (const subset of combinations(steps, count)) {
    const paths = routes(steps, subset, slots)
    if (!paths) continue
    let total = 0
    let longest = 0
    for (const [step, path] of paths) {
      total += (weight[step] ?? 1) * path.length
      longest = Math.max(longest, path.length)
    }
    if (!best || total < best.score[0] || (total === best.score[0] && longest < best.score[1])) {
      best = { score: [total, longest], subset }
    }
  }
  if (!best) {
    throw new InputError(`no ${count} of the steps ${JSON.stringify(steps)} compose all of them in at most ${MAX_HOPS} rotations each`)
  }
  return best.subset
}

/**
 * @param {number[]} items
 * @param {number} k
 * @returns {Generator<number[]>} the k-subsets of items, in lexicographic order
 */
function* combinations(items, k, start = 0, prefix = /** @type {number[]} */ ([])) {
  if (prefix.length === k) {
    yield prefix
    return
  }
  for (let i = start; i <= items.length - (k - prefix.length); i++) yield* combinations(items, k, i + 1, [...prefix, items[i]])
}
