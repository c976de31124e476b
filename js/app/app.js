// The page: pick a model, enter a row (form, drawing pad or CSV file), and get an encrypted prediction
// through the JS SDK. The secret key is made and kept in this browser (IndexedDB); the server gets
// public evaluation keys and ciphertexts only. No inline script or style: the page's CSP allows none.

import { Client, HEServeError, IndexedDBStorage, labels, probabilities } from './sdk/heserve.js'

const $ = (id) => document.getElementById(id)

// scikit-learn's first digit (a 0, 8x8, intensities 0..16): the example for the digit models.
const EXAMPLE_DIGIT = [
  0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
  0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0
]
const DIGIT_MAX = 16 // the digits models' intensity range, 0..16
const CSV_TABLE_ROWS = 50

const state = {
  client: null,
  apiKey: '',
  index: new Map(), // model name -> row of GET /v2/models
  models: new Map(), // model name -> the SDK's model (its metadata, encryption spec, keys and last run)
  name: '',
  busy: false,
  runs: 0,
  padInk: false,
  downloadUrl: null
}

// --- small helpers -----------------------------------------------------------------------------

function setStatus(text) {
  $('status').textContent = text
}

function showWarning(message) {
  $('warning').textContent = message
  $('warning').hidden = !message
}

function showError(error) {
  const box = $('error')
  if (!error) {
    box.hidden = true
    box.textContent = ''
    return
  }
  let text = error instanceof Error ? error.message : String(error)
  if (error instanceof HEServeError) {
    const parts = []
    if (error.status) parts.push(`HTTP ${error.status}`)
    if (error.code) parts.push(error.code)
    if (parts.length) text += ` (${parts.join(', ')})`
  }
  box.textContent = text
  box.hidden = false
  document.body.dataset.state = 'error'
}

function formatMs(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '–'
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`
}

function formatBytes(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) return '–'
  const exact = `${bytes.toLocaleString('en-US')} bytes`
  if (bytes < 1024) return exact
  const units = ['KiB', 'MiB', 'GiB']
  let value = bytes / 1024
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]} (${exact})`
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? '' : 's'}`
}

function formatNumber(value) {
  if (typeof value !== 'number') return String(value)
  if (!Number.isFinite(value)) return String(value)
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) return value.toExponential(4)
  return String(Number(value.toPrecision(6)))
}

function client() {
  const apiKey = $('api-key').value.trim()
  if (!state.client || apiKey !== state.apiKey) {
    state.apiKey = apiKey
    state.client = new Client(location.origin, {
      apiKey: apiKey || undefined,
      storage: new IndexedDBStorage(), // the secret key stays in this browser
      // A person here makes a few predictions: as few Galois keys as compose every rotation (4 of 12
      // for digits-mlp, 3.7 MB instead of 9.3 MB to generate in WebAssembly and upload) are worth the
      // server's extra milliseconds per row.
      rotationKeys: 'fewest',
      onWarning: (message) => showWarning(message)
    })
    state.models.clear()
  }
  return state.client
}

async function sdkModel(name) {
  const c = client()
  let model = state.models.get(name)
  if (!model) {
    model = await c.model(name)
    state.models.set(name, model)
  }
  return model
}

// --- what the model is ------------------------------------------------------------------------

function current(name = state.name) {
  return state.models.get(name) ?? null
}

function params(name = state.name) {
  return current(name)?.metadata?.parameters ?? {}
}

function inputNames(name = state.name) {
  const model = current(name)
  if (model?.inputNames?.length) return model.inputNames
  return Array.from({ length: model?.nFeatures ?? 0 }, (_, i) => `x${i}`)
}

/** 8 for 8x8 digit models, 28 for 28x28 ones, 0 for anything else. */
function digitSide(name = state.name) {
  const names = inputNames(name)
  if (!names.length || !names.every((n, i) => n === `pixel_${i}`)) return 0
  const side = Math.round(Math.sqrt(names.length))
  return side * side === names.length && (side === 8 || side === 28) ? side : 0
}

function classes(name = state.name) {
  const model = current(name)
  const values = model?.classes ?? []
  const names = values.map((v, k) => model?.classNames?.[k] ?? String(v))
  return { values, names }
}

function outputNames(width, name = state.name) {
  const names = current(name)?.outputNames
  if (names?.length === width) return names
  return Array.from({ length: width }, (_, k) => (width > 1 ? `prediction_${k}` : 'prediction'))
}

function isLinear(name = state.name) {
  const platform = state.index.get(name)?.platform ?? current(name)?.metadata?.platform ?? ''
  return platform === 'ckks-linear'
}

function exampleRow(name = state.name) {
  const side = digitSide(name)
  if (side === 8) return EXAMPLE_DIGIT.slice()
  if (side === 28) return upsample28(EXAMPLE_DIGIT)
  const p = params(name)
  const n = inputNames(name).length
  const { min, max } = p.input_ranges ?? {}
  if (Array.isArray(min) && Array.isArray(max) && min.length === n) {
    return min.map((lo, i) => Number(((lo + max[i]) / 2).toPrecision(6)))
  }
  const mean = p.preprocess?.mean
  if (Array.isArray(mean) && mean.length === n) return mean.map((v) => Number(v.toPrecision(6)))
  return new Array(n).fill(0)
}

// --- the form ---------------------------------------------------------------------------------

function buildForm() {
  const names = inputNames()
  const grid = $('feature-grid')
  grid.replaceChildren()
  const side = digitSide()
  grid.className = side ? (side === 28 ? 'grid pixels wide' : 'grid pixels') : 'grid'
  const ranges = params().input_ranges ?? {}
  const fragment = document.createDocumentFragment()
  names.forEach((name, i) => {
    const field = document.createElement('div')
    field.className = 'field'
    const label = document.createElement('label')
    label.htmlFor = `feature-${i}`
    label.textContent = name
    const input = document.createElement('input')
    input.type = 'number'
    input.step = 'any'
    input.required = true
    input.id = `feature-${i}`
    input.name = name
    input.dataset.index = String(i)
    if (Array.isArray(ranges.min) && Array.isArray(ranges.max) && !side) {
      input.title = `seen in training: ${formatNumber(ranges.min[i])} to ${formatNumber(ranges.max[i])}`
    }
    field.append(label, input)
    fragment.append(field)
  })
  grid.append(fragment)
  $('feature-legend').textContent = `Inputs of ${state.name} (${names.length})`
  $('feature-summary').textContent = side
    ? `The ${names.length} pixel values (${side}×${side}, 0 to ${DIGIT_MAX})`
    : `${names.length} values`
  $('feature-details').open = !side
  fillForm(exampleRow())
}

function formInputs() {
  return Array.from($('feature-grid').querySelectorAll('input'))
}

function fillForm(values) {
  formInputs().forEach((input, i) => {
    input.value = String(Number(Number(values[i]).toPrecision(6)))
    input.removeAttribute('aria-invalid')
  })
}

function readForm() {
  const values = []
  for (const input of formInputs()) {
    const value = input.value.trim() === '' ? NaN : Number(input.value)
    if (!Number.isFinite(value)) {
      input.setAttribute('aria-invalid', 'true')
      $('feature-details').open = true
      input.focus()
      throw new Error(`"${input.name}" must be a number`)
    }
    input.removeAttribute('aria-invalid')
    values.push(value)
  }
  return values
}

// --- running the model --------------------------------------------------------------------------

function setBusy(busy) {
  state.busy = busy
  document.body.dataset.state = busy ? 'busy' : document.body.dataset.state === 'error' ? 'error' : 'ready'
  for (const id of ['predict', 'fill-example', 'pad-predict', 'pad-clear', 'erase-keys']) $(id).disabled = busy
  $('csv-file').disabled = busy
  $('model').disabled = busy
  $('result-section').setAttribute('aria-busy', String(busy))
  if (!busy) $('erase-keys').disabled = !current()?.lastRun
}

/**
 * Encrypts `rows`, has the server evaluate them, decrypts (one round trip): the raw scores, and the
 * SDK's labels and probabilities for a classifier or values for a regression.
 */
async function evaluate(rows, { layout, onProgress } = {}) {
  const model = await sdkModel(state.name)
  const options = { layout }
  if (onProgress) options.onProgress = onProgress
  const scores = await model.rawScores(rows, options)
  if (model.isClassifier) {
    const predicted = labels(scores, model.postprocess)
    const proba = probabilities(scores, model.postprocess)
    const { names } = classes()
    const predictions = proba.map((p, r) => {
      const index = model.classes.indexOf(predicted[r])
      return { index, value: predicted[r], name: names[index] ?? String(predicted[r]), proba: p, scores: scores[r] }
    })
    return { model, predictions, classifier: true }
  }
  return { model, predictions: scores.map((s) => ({ values: s })), classifier: false }
}

function showRun(run) {
  const r = run ?? {}
  const spaced = (hex) => (hex ? `${hex.replace(/(..)(?!$)/g, '$1 ')} …` : '–')
  $('t-keygen').textContent = r.keygenMs ? formatMs(r.keygenMs) : run ? 'none: this browser\'s keys were reused' : '–'
  $('t-register').textContent = r.registerMs
    ? `${formatMs(r.registerMs)} (${formatBytes(r.keyBytes)} uploaded)`
    : run ? 'none: the server still holds the keys' : '–'
  $('t-encrypt').textContent = formatMs(r.encryptMs)
  $('t-request').textContent = formatMs(r.requestMs)
  $('t-decrypt').textContent = formatMs(r.decryptMs)
  $('bytes-sent').textContent = formatBytes(r.bytesSent)
  $('bytes-received').textContent = formatBytes(r.bytesReceived)
  const sent = `${formatBytes(r.ciphertextBytes)} in ${plural(r.ciphertexts, 'ciphertext')}`
  $('ct-bytes').textContent = run ? sent : '–'
  $('ct-hex').textContent = spaced(r.firstBytesHex)
  $('ct-middle-hex').textContent = spaced(r.payloadBytesHex)
  $('layout').textContent = r.layout ? `${r.layout}, ${plural(r.rows, 'row')}, ${plural(r.requests, 'request')}` : '–'
  $('key-id').textContent = r.keyId ?? '–'
  $('key-id').dataset.keyId = r.keyId ?? ''
}

function showPrediction(result) {
  const [first] = result.predictions
  const out = $('prediction')
  const table = $('probabilities')
  const body = table.tBodies[0]
  body.replaceChildren()
  if (result.classifier) {
    out.textContent = first.name
    out.dataset.label = String(first.value)
    const { names } = classes()
    first.proba.forEach((p, k) => {
      const tr = document.createElement('tr')
      const name = document.createElement('th')
      name.scope = 'row'
      name.textContent = names[k] ?? String(k)
      const value = document.createElement('td')
      value.textContent = p.toFixed(4)
      const barCell = document.createElement('td')
      const meter = document.createElement('meter')
      meter.min = 0
      meter.max = 1
      meter.value = p
      meter.setAttribute('aria-label', `probability of ${name.textContent}`)
      barCell.append(meter)
      if (k === first.index) tr.className = 'best'
      tr.append(name, value, barCell)
      body.append(tr)
    })
    table.hidden = false
    const score = first.scores.length === 1
      ? `logit ${formatNumber(first.scores[0])}`
      : `score ${formatNumber(first.scores[first.index])}`
    $('decision').textContent = `probability ${first.proba[first.index].toFixed(4)} (decrypted ${score})`
  } else {
    const names = outputNames(first.values.length)
    const several = first.values.length > 1
    const shown = first.values.map((v, k) => (several ? `${names[k]} = ${formatNumber(v)}` : formatNumber(v)))
    out.textContent = shown.join(', ')
    out.dataset.label = JSON.stringify(first.values)
    table.hidden = true
    $('decision').textContent = 'a regression: the decrypted value of the model'
  }
  $('result-empty').hidden = true
  $('result').hidden = false
}

/**
 * Runs one user action with the controls disabled and its error shown. Predictions and erasures
 * (`counted`) increase body[data-runs] when they succeed: what a test or a script waits for.
 */
async function guarded(what, action, { counted = true } = {}) {
  if (state.busy) return
  showError(null)
  setBusy(true)
  setStatus(what)
  try {
    await action()
    if (counted) {
      state.runs += 1
      document.body.dataset.runs = String(state.runs)
    }
    document.body.dataset.state = 'ready'
  } catch (error) {
    showError(error)
    setStatus('')
  } finally {
    setBusy(false)
  }
}

async function predictRow(values, source) {
  await guarded(`Encrypting ${source} and asking the server…`, async () => {
    const result = await evaluate([values], { layout: 'single' })
    showPrediction(result)
    showRun(result.model.lastRun)
    setStatus(`Done: ${source}, encrypted end to end.`)
  })
}

// --- the drawing pad ------------------------------------------------------------------------------

const PAD_STROKE = 22

function padContext() {
  return $('pad').getContext('2d', { willReadFrequently: true })
}

function clearPad() {
  const ctx = padContext()
  ctx.fillStyle = '#ffffff'
  ctx.fillRect(0, 0, $('pad').width, $('pad').height)
  state.padInk = false
  drawPreview(null)
}

function setUpPad() {
  const pad = $('pad')
  const ctx = padContext()
  let last = null
  const point = (event) => {
    const box = pad.getBoundingClientRect()
    return {
      x: ((event.clientX - box.left) * pad.width) / box.width,
      y: ((event.clientY - box.top) * pad.height) / box.height
    }
  }
  const stroke = (from, to) => {
    ctx.strokeStyle = '#000000'
    ctx.fillStyle = '#000000'
    ctx.lineWidth = PAD_STROKE
    ctx.lineCap = 'round'
    ctx.lineJoin = 'round'
    ctx.beginPath()
    ctx.moveTo(from.x, from.y)
    ctx.lineTo(to.x, to.y)
    ctx.stroke()
    state.padInk = true
  }
  pad.addEventListener('pointerdown', (event) => {
    event.preventDefault()
    pad.setPointerCapture(event.pointerId)
    last = point(event)
    stroke(last, last)
  })
  pad.addEventListener('pointermove', (event) => {
    if (!last) return
    const next = point(event)
    stroke(last, next)
    last = next
  })
  const end = () => {
    if (last) {
      last = null
      const side = digitSide()
      if (side && state.padInk) {
        const values = padValues(side)
        drawPreview(values, side)
        fillForm(values)
      }
    }
  }
  pad.addEventListener('pointerup', end)
  pad.addEventListener('pointercancel', end)
  pad.addEventListener('lostpointercapture', end)
  clearPad()
}

/**
 * The drawing as scikit-learn's digits see theirs: the digit's bounding box scaled to a 32x32 bitmap
 * (height filled, centred), each 4x4 block summed to an intensity 0..16; 28x28 models get that 8x8
 * image upsampled bilinearly, as their training data was (scipy.ndimage.zoom, order 1).
 */
function padValues(side) {
  const pad = $('pad')
  const { data, width, height } = padContext().getImageData(0, 0, pad.width, pad.height)
  let x0 = width
  let y0 = height
  let x1 = -1
  let y1 = -1
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[(y * width + x) * 4] < 200) {
        if (x < x0) x0 = x
        if (x > x1) x1 = x
        if (y < y0) y0 = y
        if (y > y1) y1 = y
      }
    }
  }
  if (x1 < 0) throw new Error('draw a digit first')
  const w = x1 - x0 + 1
  const h = y1 - y0 + 1
  const scale = 32 / Math.max(w, h)
  const dw = Math.max(1, Math.round(w * scale))
  const dh = Math.max(1, Math.round(h * scale))
  const small = document.createElement('canvas')
  small.width = 32
  small.height = 32
  const sctx = small.getContext('2d', { willReadFrequently: true })
  sctx.fillStyle = '#ffffff'
  sctx.fillRect(0, 0, 32, 32)
  sctx.imageSmoothingEnabled = true
  sctx.imageSmoothingQuality = 'high'
  sctx.drawImage(pad, x0, y0, w, h, Math.floor((32 - dw) / 2), Math.floor((32 - dh) / 2), dw, dh)
  const bits = sctx.getImageData(0, 0, 32, 32).data
  const grid = new Array(64).fill(0)
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const ink = 1 - bits[(y * 32 + x) * 4] / 255
      if (ink >= 0.4) grid[(y >> 2) * 8 + (x >> 2)] += 1
    }
  }
  return side === 28 ? upsample28(grid) : grid
}

/** 8x8 -> 28x28, bilinear with the corners aligned (scipy.ndimage.zoom(image, 3.5, order=1)), clipped to 0..16. */
function upsample28(grid) {
  const out = new Array(784)
  for (let i = 0; i < 28; i++) {
    const y = (i * 7) / 27
    const ya = Math.floor(y)
    const yb = Math.min(ya + 1, 7)
    const fy = y - ya
    for (let j = 0; j < 28; j++) {
      const x = (j * 7) / 27
      const xa = Math.floor(x)
      const xb = Math.min(xa + 1, 7)
      const fx = x - xa
      const v =
        grid[ya * 8 + xa] * (1 - fy) * (1 - fx) +
        grid[ya * 8 + xb] * (1 - fy) * fx +
        grid[yb * 8 + xa] * fy * (1 - fx) +
        grid[yb * 8 + xb] * fy * fx
      out[i * 28 + j] = Math.min(DIGIT_MAX, Math.max(0, Number(v.toPrecision(6))))
    }
  }
  return out
}

function drawPreview(values, side = digitSide() || 8) {
  const preview = $('pad-preview')
  preview.width = side
  preview.height = side
  const ctx = preview.getContext('2d')
  const image = ctx.createImageData(side, side)
  for (let k = 0; k < side * side; k++) {
    const level = values ? 255 - Math.round((Math.min(DIGIT_MAX, Math.max(0, values[k])) / DIGIT_MAX) * 255) : 255
    image.data.set([level, level, level, 255], k * 4)
  }
  ctx.putImageData(image, 0, 0)
  $('pad-preview-caption').textContent = `What the model receives (${side}×${side})`
}

// --- CSV ----------------------------------------------------------------------------------------

function splitCsvLine(line) {
  const cells = []
  let cell = ''
  let quoted = false
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        cell += '"'
        i++
      } else if (ch === '"') {
        quoted = false
      } else {
        cell += ch
      }
    } else if (ch === '"') {
      quoted = true
    } else if (ch === ',' || ch === ';' || ch === '\t') {
      cells.push(cell.trim())
      cell = ''
    } else {
      cell += ch
    }
  }
  cells.push(cell.trim())
  return cells
}

/** Rows of numbers for the model's inputs, from CSV text (header optional). */
function parseCsv(text) {
  const names = inputNames()
  const lines = text.split(/\r?\n/).filter((line) => line.trim() !== '')
  if (!lines.length) throw new Error('the CSV file is empty')
  let first = splitCsvLine(lines[0])
  let columns = null
  let start = 0
  if (first.some((cell) => cell === '' || !Number.isFinite(Number(cell)))) {
    start = 1
    first = first.map((cell) => cell.trim())
    const positions = names.map((name) => first.indexOf(name))
    if (positions.every((p) => p >= 0)) {
      columns = positions
    } else if (first.length === names.length) {
      columns = names.map((_, i) => i)
    } else {
      const missing = names.filter((_, i) => positions[i] < 0)
      const examples = missing.slice(0, 3).join('", "')
      throw new Error(`the CSV header lacks ${missing.length} of the model's inputs, e.g. "${examples}"`)
    }
  }
  const rows = []
  for (let r = start; r < lines.length; r++) {
    const cells = splitCsvLine(lines[r])
    let picked
    if (columns) {
      picked = columns.map((c) => cells[c])
    } else {
      if (cells.length !== names.length) {
        throw new Error(
          `line ${r + 1} has ${cells.length} values, ${state.name} takes ${names.length} ` +
            '(add a header line to pick columns by name)'
        )
      }
      picked = cells
    }
    const row = picked.map(Number)
    const bad = row.findIndex((v, k) => picked[k] === undefined || picked[k] === '' || !Number.isFinite(v))
    if (bad >= 0) {
      throw new Error(`line ${r + 1}: "${names[bad]}" is not a number (${JSON.stringify(picked[bad] ?? '')})`)
    }
    rows.push(row)
  }
  if (!rows.length) throw new Error('the CSV file has a header but no rows')
  return rows
}

// The SDK's progress stages, as parts of the bar (encryption and the request weigh most).
const STAGES = {
  keys: [0, 0.05, 'generating keys'],
  register: [0.05, 0.15, 'registering the evaluation keys'],
  encrypt: [0.15, 0.55, 'encrypting'],
  request: [0.55, 0.9, 'the server is computing on ciphertexts'],
  decrypt: [0.9, 1, 'decrypting'],
  done: [1, 1, 'done']
}

function progressHandler() {
  const bar = $('csv-progress')
  const text = $('csv-progress-text')
  return ({ stage, done = 0, total = 0 } = {}) => {
    const [from, to, label] = STAGES[stage] ?? [0, 0, String(stage)]
    const fraction = from + (to - from) * (total ? Math.min(1, done / total) : 0)
    bar.value = Math.max(bar.value, fraction) // stages may repeat (a key registered again): never go back
    text.textContent = total > 1 ? `${label}: ${done} / ${total}` : label
  }
}

function csvOutput(rows, result) {
  const { predictions, classifier } = result
  const names = classes()
  let header
  let lines
  if (classifier) {
    header = ['row', 'prediction', 'prediction_name', ...names.values.map((v) => `proba_${v}`)]
    lines = predictions.map((p, r) => [r, p.value, p.name, ...p.proba.map((x) => x.toPrecision(8))])
  } else {
    const width = predictions[0]?.values.length ?? 1
    header = ['row', ...outputNames(width)]
    lines = predictions.map((p, r) => [r, ...p.values.map((x) => x.toPrecision(8))])
  }
  const quote = (cell) => (/[",\n]/.test(String(cell)) ? `"${String(cell).replace(/"/g, '""')}"` : String(cell))
  const text = [header, ...lines].map((line) => line.map(quote).join(',')).join('\n') + '\n'
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl)
  state.downloadUrl = URL.createObjectURL(new Blob([text], { type: 'text/csv' }))
  $('csv-download').href = state.downloadUrl

  const table = $('csv-table')
  const head = document.createElement('tr')
  for (const name of header) {
    const th = document.createElement('th')
    th.scope = 'col'
    th.textContent = name
    head.append(th)
  }
  table.tHead.replaceChildren(head)
  const body = table.tBodies[0]
  body.replaceChildren()
  for (const line of lines.slice(0, CSV_TABLE_ROWS)) {
    const tr = document.createElement('tr')
    for (const cell of line) {
      const td = document.createElement('td')
      td.textContent = typeof cell === 'number' ? formatNumber(cell) : String(cell)
      tr.append(td)
    }
    body.append(tr)
  }
  table.caption.textContent =
    rows.length > CSV_TABLE_ROWS ? `First ${CSV_TABLE_ROWS} of ${rows.length} rows` : plural(rows.length, 'row')
  $('csv-output').hidden = false
}

async function predictCsv(file) {
  if (!file) return
  await guarded(`Reading ${file.name}…`, async () => {
    const rows = parseCsv(await file.text())
    const layout = isLinear() && rows.length > 1 ? 'batch' : 'single'
    const bar = $('csv-progress')
    bar.value = 0
    $('csv-progress-text').textContent = ''
    setStatus(`Encrypting ${rows.length} rows (${layout} layout) and asking the server…`)
    const started = performance.now()
    const result = await evaluate(rows, { layout, onProgress: progressHandler() })
    const elapsed = performance.now() - started
    bar.value = 1
    csvOutput(rows, result)
    showPrediction(result)
    showRun(result.model.lastRun)
    $('csv-summary').textContent = `${rows.length} rows from ${file.name}, ${layout} layout, in ${formatMs(elapsed)}.`
    $('csv-summary').dataset.rows = String(rows.length)
    const shown = result.predictions.map((p) => (result.classifier ? p.value : p.values))
    $('csv-table').dataset.labels = JSON.stringify(shown) // every row's label (or values), for scripts and tests
    setStatus(`Done: ${rows.length} rows, encrypted end to end.`)
  })
}

function setUpCsv() {
  const input = $('csv-file')
  const zone = $('drop-zone')
  input.addEventListener('change', () => {
    const [file] = input.files
    predictCsv(file).finally(() => {
      input.value = ''
    })
  })
  zone.addEventListener('dragover', (event) => {
    event.preventDefault()
    zone.classList.add('over')
  })
  zone.addEventListener('dragleave', () => zone.classList.remove('over'))
  zone.addEventListener('drop', (event) => {
    event.preventDefault()
    zone.classList.remove('over')
    const [file] = event.dataTransfer?.files ?? []
    if (!input.disabled) predictCsv(file)
  })
}

// --- models -------------------------------------------------------------------------------------

async function selectModel(name) {
  state.name = name
  showError(null)
  showWarning('')
  setStatus(`Loading ${name}…`)
  const model = await sdkModel(name)
  const about = [model.description, state.index.get(name)?.platform, model.task]
  $('model-description').textContent = about.filter(Boolean).join(' · ')
  $('pad-section').hidden = !digitSide()
  buildForm()
  if (digitSide()) {
    clearPad()
    drawPreview(exampleRow(), digitSide())
  }
  $('feature-fields').disabled = false
  $('predict').disabled = false
  $('fill-example').disabled = false
  $('csv-file').disabled = false
  $('result').hidden = true
  $('result-empty').hidden = false
  $('csv-output').hidden = true
  $('csv-progress').value = 0
  $('csv-progress-text').textContent = ''
  $('erase-status').textContent = ''
  $('erase-status').className = ''
  showRun(model.lastRun)
  document.body.dataset.model = name
  setStatus(`${name}: ${inputNames().length} inputs.`)
}

async function loadModels() {
  showError(null)
  const select = $('model')
  select.disabled = true
  try {
    const models = await client().models()
    state.index = new Map(models.map((m) => [m.name, m]))
    const ready = models.filter((m) => (m.state ?? 'READY') === 'READY')
    select.replaceChildren(
      ...ready.map((m) => {
        const option = document.createElement('option')
        option.value = m.name
        option.textContent = `${m.name} (${m.platform ?? 'model'})`
        return option
      })
    )
    if (!ready.length) throw new Error('this server serves no model')
    const wanted = new URLSearchParams(location.search).get('model')
    const initial = ready.some((m) => m.name === wanted) ? wanted : ready[0].name
    select.value = initial
    await selectModel(initial)
    document.body.dataset.state = 'ready'
  } catch (error) {
    showError(error)
    if (error instanceof HEServeError && (error.status === 401 || error.status === 403)) {
      setStatus('This server asks for an API key: type it above, then press Enter.')
    }
  } finally {
    select.disabled = false
  }
}

function setUp() {
  $('model').addEventListener('change', (event) => {
    guarded(`Loading ${event.target.value}…`, () => selectModel(event.target.value), { counted: false })
  })
  const useKey = () => {
    if ($('api-key').value.trim() === state.apiKey && state.client) return
    state.client = null
    if (!state.index.size) loadModels()
    else guarded('Using the new API key…', () => selectModel(state.name), { counted: false })
  }
  $('api-key').addEventListener('change', useKey)
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault() // form-action 'none': nothing is ever submitted; Enter applies the key
    useKey()
  })
  $('features').addEventListener('submit', (event) => {
    event.preventDefault()
    let values
    try {
      values = readForm()
    } catch (error) {
      showError(error)
      return
    }
    predictRow(values, 'the form\'s row')
  })
  $('fill-example').addEventListener('click', () => {
    fillForm(exampleRow())
    if (digitSide()) {
      clearPad()
      drawPreview(exampleRow(), digitSide())
    }
  })
  $('pad-clear').addEventListener('click', () => {
    clearPad()
  })
  $('pad-predict').addEventListener('click', () => {
    const side = digitSide()
    if (!side) return
    let values
    try {
      values = padValues(side)
    } catch (error) {
      showError(error)
      return
    }
    drawPreview(values, side)
    fillForm(values)
    predictRow(values, 'the drawing')
  })
  $('erase-keys').addEventListener('click', () => {
    const model = current()
    if (!model) return
    guarded('Erasing your keys from the server…', async () => {
      const { keyId, erased } = await model.deleteKey()
      const status = $('erase-status')
      status.textContent = erased
        ? `Erased key ${keyId} from the server, and the secret key from this browser. ` +
          'The next prediction makes new keys.'
        : 'The server held no keys of yours for this model; the secret key is erased from this browser.'
      status.className = 'ok'
      status.dataset.erased = keyId ?? ''
      setStatus('Keys erased.')
    })
  })
  setUpPad()
  setUpCsv()
  loadModels()
}

setUp()
