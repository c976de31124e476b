// heserve's JavaScript SDK: encrypted inference from a browser or Node (>= 22).
//
//   import { Client } from './heserve.js'
//   const client = new Client('http://127.0.0.1:8000')
//   const model = await client.model('breast-cancer-logreg')
//   const labels = await model.predict(rows)        // rows: raw features, encrypted before they leave
//
// The only bare import is 'node-seal' (in ./seal.js): Node resolves it from node_modules, a page maps
// it with an import map (see js/README.md).

export { Client, RemoteModel, SINGLE_CIPHERTEXTS_PER_REQUEST, REQUEST_BYTES_TARGET, KEY_REUSE_MARGIN_MS, sumSlotClasses } from './client.js'
export {
  HEServeError,
  ServerUnavailableError,
  RequestTimeoutError,
  AuthenticationError,
  NotFoundError,
  BadRequestError,
  QuotaError,
  InputError,
  ProtocolError,
  KeyStoreError,
  errorForStatus,
} from './errors.js'
export { MemoryStorage, IndexedDBStorage } from './storage.js'
export { SecretContext } from './keys.js'
export { bindingTag, newBindingKey, BINDING_KEY_BYTES, TAGGED_PREFIX } from './binding.js'
export { Blake2b, toHex, fromHex } from './blake2b.js'
export { parseSpec, parseParams, galoisElement, paramsKey, inputScale, SINGLE, BATCH, SLOTS, COEFFICIENTS } from './spec.js'
export { preprocess, probabilities, labels, sigmoid, softmax } from './postprocess.js'
export { compactSteps, routes, MAX_HOPS, FEWEST } from './rotations.js'
export { tileFeatures, packSingle, packBatch } from './encoding.js'
export { InputRanges } from './ranges.js'
export { loadSeal } from './seal.js'
export * as v2 from './v2.js'
