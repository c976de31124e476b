// Where the client keeps its keys between calls: the secret key (with its binding key) per parameter
// set, and the id under which the server holds the matching evaluation keys. Nothing here is ever
// sent. Any object with these three async methods will do; two implementations are given.

/**
 * A key store. Names are short ASCII strings chosen by the SDK; values are bytes.
 * @typedef {object} KeyStorage
 * @property {(name: string) => Promise<Uint8Array | null>} get the bytes stored under `name`, or null
 * @property {(name: string, bytes: Uint8Array) => Promise<void>} put
 * @property {(name: string) => Promise<void>} delete no error when nothing is stored under `name`
 */

/**
 * Keys in this process's memory only (the default in Node): gone when the process ends, so every run
 * generates and registers keys anew.
 * @implements {KeyStorage}
 */
export class MemoryStorage {
  constructor() {
    /** @type {Map<string, Uint8Array>} */
    this.map = new Map()
  }

  /** @param {string} name */
  async get(name) {
    const value = this.map.get(name)
    return value ? value.slice() : null
  }

  /** @param {string} name @param {Uint8Array} bytes */
  async put(name, bytes) {
    this.map.set(name, bytes.slice())
  }

  /** @param {string} name */
  async delete(name) {
    const value = this.map.get(name)
    if (value) value.fill(0)
    this.map.delete(name)
  }
}

/**
 * Keys in the browser's IndexedDB (database `heserve-keys` by default, one object store), never in
 * localStorage (strings only, synchronous, and readable by anything that dumps a page's storage as
 * text). The secret key stays on this device, readable by scripts of the page's own origin like all
 * of its storage; clear it with `model.deleteKey()` (or by clearing the site's data).
 * @implements {KeyStorage}
 */
export class IndexedDBStorage {
  /**
   * @param {{database?: string, store?: string, indexedDB?: IDBFactory}} [options] `indexedDB`: the
   *   factory to use (default: globalThis.indexedDB)
   */
  constructor({ database = 'heserve-keys', store = 'keys', indexedDB } = {}) {
    this.database = database
    this.store = store
    this.factory = indexedDB ?? globalThis.indexedDB
    if (!this.factory) throw new TypeError('IndexedDB is not available here: use MemoryStorage or another KeyStorage')
    /** @type {Promise<IDBDatabase> | null} */
    this.opening = null
  }

  /** @returns {Promise<IDBDatabase>} */
  open() {
    if (!this.opening) {
      this.opening = new Promise((resolve, reject) => {
        const request = this.factory.open(this.database, 1)
        request.onupgradeneeded = () => {
          if (!request.result.objectStoreNames.contains(this.store)) request.result.createObjectStore(this.store)
        }
        request.onsuccess = () => resolve(request.result)
        request.onerror = () => {
          this.opening = null
          reject(request.error)
        }
      })
    }
    return this.opening
  }

  /**
   * @template T
   * @param {IDBTransactionMode} mode
   * @param {(store: IDBObjectStore) => IDBRequest} action
   * @returns {Promise<T>}
   */
  async run(mode, action) {
    const db = await this.open()
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(this.store, mode)
      const request = action(transaction.objectStore(this.store))
      transaction.oncomplete = () => resolve(request.result)
      transaction.onerror = () => reject(transaction.error ?? request.error)
      transaction.onabort = () => reject(transaction.error ?? new Error('IndexedDB transaction aborted'))
    })
  }

  /** @param {string} name @returns {Promise<Uint8Array | null>} */
  async get(name) {
    const value = await this.run('readonly', (store) => store.get(name))
    if (value === undefined || value === null) return null
    return value instanceof Uint8Array ? value : new Uint8Array(/** @type {ArrayBuffer} */ (value))
  }

  /** @param {string} name @param {Uint8Array} bytes */
  async put(name, bytes) {
    await this.run('readwrite', (store) => store.put(bytes.slice(), name))
  }

  /** @param {string} name */
  async delete(name) {
    await this.run('readwrite', (store) => store.delete(name))
  }

  /** Close the database connection (the next call opens it again). */
  async close() {
    if (this.opening) {
      const db = await this.opening.catch(() => null)
      db?.close()
      this.opening = null
    }
  }
}
