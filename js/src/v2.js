// Open Inference Protocol (V2) bodies, JSON and with the binary tensor extension (protocol/v2.py).
//
// Binary extension: the JSON header comes first, its length in the Inference-Header-Content-Length
// HTTP header; the raw bytes of each tensor whose parameters.binary_data_size is set follow, in
// declaration order. A BYTES tensor is a sequence of elements, each a 4-byte little-endian length
// followed by that many bytes (a ciphertext, for this server).

import { ProtocolError } from './errors.js'

export const HEADER_LENGTH = 'Inference-Header-Content-Length'
export const BINARY_CONTENT_TYPE = 'application/octet-stream'
export const JSON_CONTENT_TYPE = 'application/json'

/**
 * @typedef {'BOOL'|'UINT8'|'UINT16'|'UINT32'|'UINT64'|'INT8'|'INT16'|'INT32'|'INT64'|'FP16'|'FP32'|'FP64'|'BYTES'} Datatype
 */

/**
 * One named tensor. `data`: for BYTES, a list of byte strings; otherwise the values, flattened in
 * row-major order of `shape` (numbers, or bigints for 64-bit integers read from binary data).
 * @typedef {object} Tensor
 * @property {string} name
 * @property {Datatype} datatype
 * @property {number[]} shape
 * @property {Uint8Array[] | ArrayLike<number | bigint | boolean>} data
 * @property {Record<string, unknown>} [parameters]
 */

/**
 * @typedef {object} Message
 * @property {Tensor[]} tensors
 * @property {Record<string, unknown>} [parameters]
 * @property {string} [id]
 */

/** Bytes per element of each numeric datatype (FP16 is read, not written). */
const SIZES = { BOOL: 1, UINT8: 1, UINT16: 2, UINT32: 4, UINT64: 8, INT8: 1, INT16: 2, INT32: 4, INT64: 8, FP16: 2, FP32: 4, FP64: 8 }

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** @param {number[]} shape */
const elementCount = (shape) => shape.reduce((a, b) => a * b, 1)

/**
 * @param {Tensor} tensor
 * @returns {Uint8Array}
 */
function tensorBytes(tensor) {
  if (tensor.datatype === 'BYTES') {
    const elements = /** @type {Uint8Array[]} */ (tensor.data)
    const total = elements.reduce((sum, e) => sum + 4 + e.length, 0)
    const out = new Uint8Array(total)
    const view = new DataView(out.buffer)
    let offset = 0
    for (const element of elements) {
      view.setUint32(offset, element.length, true)
      out.set(element, offset + 4)
      offset += 4 + element.length
    }
    return out
  }
  const size = SIZES[tensor.datatype]
  if (!size || tensor.datatype === 'FP16') throw new TypeError(`cannot write ${tensor.datatype} tensors`)
  const values = /** @type {ArrayLike<number | bigint | boolean>} */ (tensor.data)
  const out = new Uint8Array(values.length * size)
  const view = new DataView(out.buffer)
  for (let i = 0; i < values.length; i++) {
    const value = values[i]
    const offset = i * size
    switch (tensor.datatype) {
      case 'BOOL': view.setUint8(offset, value ? 1 : 0); break
      case 'UINT8': view.setUint8(offset, Number(value)); break
      case 'INT8': view.setInt8(offset, Number(value)); break
      case 'UINT16': view.setUint16(offset, Number(value), true); break
      case 'INT16': view.setInt16(offset, Number(value), true); break
      case 'UINT32': view.setUint32(offset, Number(value), true); break
      case 'INT32': view.setInt32(offset, Number(value), true); break
      case 'UINT64': view.setBigUint64(offset, BigInt(value), true); break
      case 'INT64': view.setBigInt64(offset, BigInt(value), true); break
      case 'FP32': view.setFloat32(offset, Number(value), true); break
      case 'FP64': view.setFloat64(offset, Number(value), true); break
    }
  }
  return out
}

/**
 * Serialize a request ("inputs") or response ("outputs").
 * @param {Message} message
 * @param {'inputs' | 'outputs'} tensorKey
 * @param {boolean} binary every tensor in binary (true) or every tensor in JSON (false; BYTES must then be UTF-8 text)
 * @returns {{body: Uint8Array, headerLength: number | null}} headerLength is null for a pure JSON body
 */
export function encode(message, tensorKey, binary) {
  /** @type {Record<string, unknown>} */
  const header = {}
  if (message.id !== undefined) header.id = message.id
  if (message.parameters && Object.keys(message.parameters).length) header.parameters = message.parameters
  /** @type {Uint8Array[]} */
  const blobs = []
  header[tensorKey] = message.tensors.map((tensor) => {
    /** @type {Record<string, unknown>} */
    const entry = { name: tensor.name, datatype: tensor.datatype, shape: [...tensor.shape] }
    const params = { ...(tensor.parameters ?? {}) }
    const count = tensor.datatype === 'BYTES' ? tensor.data.length : tensor.data.length
    if (count !== elementCount(tensor.shape)) {
      throw new TypeError(`tensor ${tensor.name}: ${count} elements for shape [${tensor.shape}]`)
    }
    if (binary) {
      const blob = tensorBytes(tensor)
      params.binary_data_size = blob.length
      blobs.push(blob)
    } else if (tensor.datatype === 'BYTES') {
      entry.data = /** @type {Uint8Array[]} */ (tensor.data).map((e) => decoder.decode(e))
    } else {
      entry.data = Array.from(/** @type {ArrayLike<number | bigint | boolean>} */ (tensor.data), (x) =>
        typeof x === 'bigint' ? Number(x) : x
      )
    }
    if (Object.keys(params).length) entry.parameters = params
    return entry
  })
  const headerBytes = encoder.encode(JSON.stringify(header))
  if (!blobs.length) return { body: headerBytes, headerLength: null }
  const total = headerBytes.length + blobs.reduce((sum, b) => sum + b.length, 0)
  const body = new Uint8Array(total)
  body.set(headerBytes, 0)
  let offset = headerBytes.length
  for (const blob of blobs) {
    body.set(blob, offset)
    offset += blob.length
  }
  return { body, headerLength: headerBytes.length }
}

/**
 * @param {unknown} data
 * @param {number} depth
 * @returns {unknown[]}
 */
function flatten(data, depth = 0) {
  if (!Array.isArray(data)) throw new ProtocolError('tensor data must be a list', 'bad_data')
  if (depth > 8) throw new ProtocolError('tensor data nested too deeply', 'bad_data')
  return data.some(Array.isArray) ? data.flatMap((d) => (Array.isArray(d) ? flatten(d, depth + 1) : [d])) : data
}

/** @param {number} bits */
function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1
  const exponent = (bits >> 10) & 0x1f
  const fraction = bits & 0x3ff
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024)
  if (exponent === 31) return fraction ? NaN : sign * Infinity
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024)
}

/**
 * @param {Uint8Array} raw
 * @param {Datatype} datatype
 * @param {number} count
 * @param {string} where
 * @returns {Uint8Array[] | Array<number | bigint | boolean>}
 */
function readBinary(raw, datatype, count, where) {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength)
  if (datatype === 'BYTES') {
    if (count > raw.length / 4) throw new ProtocolError(`${where}: ${raw.length} bytes cannot hold ${count} BYTES elements`, 'bad_binary_framing')
    const elements = []
    let offset = 0
    for (let i = 0; i < count; i++) {
      if (offset + 4 > raw.length) throw new ProtocolError(`${where}: BYTES element ${i} has a truncated length prefix`, 'bad_binary_framing')
      const length = view.getUint32(offset, true)
      offset += 4
      if (offset + length > raw.length) throw new ProtocolError(`${where}: BYTES element ${i} is truncated`, 'bad_binary_framing')
      elements.push(raw.slice(offset, offset + length))
      offset += length
    }
    if (offset !== raw.length) throw new ProtocolError(`${where}: ${raw.length - offset} bytes left over after ${count} elements`, 'bad_binary_framing')
    return elements
  }
  const size = SIZES[datatype]
  if (raw.length !== count * size) throw new ProtocolError(`${where}: ${raw.length} bytes do not hold ${count} ${datatype} values`, 'bad_binary_framing')
  const out = new Array(count)
  for (let i = 0; i < count; i++) {
    const o = i * size
    switch (datatype) {
      case 'BOOL': out[i] = view.getUint8(o) !== 0; break
      case 'UINT8': out[i] = view.getUint8(o); break
      case 'INT8': out[i] = view.getInt8(o); break
      case 'UINT16': out[i] = view.getUint16(o, true); break
      case 'INT16': out[i] = view.getInt16(o, true); break
      case 'UINT32': out[i] = view.getUint32(o, true); break
      case 'INT32': out[i] = view.getInt32(o, true); break
      case 'UINT64': out[i] = view.getBigUint64(o, true); break
      case 'INT64': out[i] = view.getBigInt64(o, true); break
      case 'FP16': out[i] = halfToFloat(view.getUint16(o, true)); break
      case 'FP32': out[i] = view.getFloat32(o, true); break
      case 'FP64': out[i] = view.getFloat64(o, true); break
    }
  }
  return out
}

/**
 * Parse a request ("inputs") or response ("outputs") body.
 * @param {Uint8Array} body
 * @param {number | null} headerLength the Inference-Header-Content-Length header, or null for pure JSON
 * @param {'inputs' | 'outputs'} tensorKey
 * @returns {Message}
 */
export function decode(body, headerLength, tensorKey) {
  /** @type {Uint8Array} */
  let headerBytes = body
  /** @type {Uint8Array} */
  let rest = new Uint8Array(0)
  if (headerLength !== null) {
    if (!Number.isInteger(headerLength) || headerLength < 0 || headerLength > body.length) {
      throw new ProtocolError(`${HEADER_LENGTH} is ${headerLength} but the body has ${body.length} bytes`, 'bad_binary_framing')
    }
    headerBytes = body.subarray(0, headerLength)
    rest = body.subarray(headerLength)
  }
  let header
  try {
    header = JSON.parse(decoder.decode(headerBytes))
  } catch (error) {
    throw new ProtocolError(`the JSON header is malformed: ${/** @type {Error} */ (error).message}`, 'malformed_json')
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw new ProtocolError('the JSON header must be an object')
  const entries = header[tensorKey]
  if (!Array.isArray(entries) || !entries.length) throw new ProtocolError(`'${tensorKey}' must be a non-empty list`)
  let offset = 0
  const tensors = entries.map((entry, index) => {
    const where = `${tensorKey}[${index}]`
    if (!entry || typeof entry !== 'object') throw new ProtocolError(`${where} must be an object`)
    const { name, datatype, shape } = entry
    if (typeof name !== 'string' || !name) throw new ProtocolError(`${where}: 'name' must be a non-empty string`)
    if (datatype !== 'BYTES' && !(datatype in SIZES)) throw new ProtocolError(`${where}: unknown datatype ${datatype}`, 'bad_datatype')
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new ProtocolError(`${where}: shape must be a list of non-negative integers`, 'bad_shape')
    }
    const count = elementCount(shape)
    const parameters = entry.parameters ?? {}
    const size = parameters.binary_data_size
    let data
    if (size !== undefined && size !== null) {
      if (headerLength === null) throw new ProtocolError(`${where}: binary_data_size given without ${HEADER_LENGTH}`, 'bad_binary_framing')
      if (!Number.isInteger(size) || size < 0 || offset + size > rest.length) {
        throw new ProtocolError(`${where}: binary data is truncated`, 'bad_binary_framing')
      }
      data = readBinary(rest.subarray(offset, offset + size), datatype, count, where)
      offset += size
    } else {
      if (!('data' in entry)) throw new ProtocolError(`${where}: neither 'data' nor binary_data_size given`)
      const flat = flatten(entry.data)
      if (flat.length !== count) throw new ProtocolError(`${where}: ${flat.length} elements given for shape [${shape}]`, 'bad_data')
      data = datatype === 'BYTES' ? flat.map((s) => encoder.encode(String(s))) : /** @type {number[]} */ (flat)
    }
    return { name, datatype, shape, data, parameters }
  })
  if (offset !== rest.length) {
    throw new ProtocolError(`${rest.length - offset} bytes of binary data follow the declared tensors`, 'bad_binary_framing')
  }
  return { tensors, parameters: header.parameters ?? {}, id: header.id }
}
