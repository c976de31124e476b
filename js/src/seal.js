// The one module that imports node-seal (Microsoft SEAL 4.1 in WebAssembly). Node resolves the bare
// specifier from js/node_modules; a web page maps it with an import map, e.g.
//   <script type="importmap">{"imports": {"node-seal": "/static/node-seal/index_throws.js"}}</script>
// next to which seal_throws.js and seal_throws.wasm must be served (node-seal finds its .wasm file
// relative to its own URL).

import SEAL from 'node-seal'

/** @typedef {import('node-seal').MainModule} Seal */

/** @type {Promise<Seal> | null} */
let loading = null

/**
 * node-seal's module, compiled once per process or page.
 * @returns {Promise<Seal>}
 */
export function loadSeal() {
  if (!loading) {
    loading = SEAL().catch((/** @type {unknown} */ error) => {
      loading = null
      throw error
    })
  }
  return loading
}

/**
 * SEAL's C++ exceptions arrive as WebAssembly exceptions whose message may be [type, what].
 * @param {unknown} error
 * @returns {string}
 */
export function describeSealError(error) {
  const message = /** @type {any} */ (error)?.message
  if (Array.isArray(message)) return message.join(': ')
  return String(message ?? error)
}
