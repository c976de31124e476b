// Binding tags (protocol/binding.py): each ciphertext a client sends carries a keyed BLAKE2b-128 tag,
// person "heserve-bind", over its length (8 bytes, little-endian) and its first 4096 bytes. The server
// checks it against the binding key registered with the evaluation keys, so a ciphertext made under
// another secret key is refused (400, binding_mismatch) instead of decrypting to garbage.

import { Blake2b } from './blake2b.js'

export const BINDING_KEY_BYTES = 32
export const TAGGED_PREFIX = 4096
const PERSON = new TextEncoder().encode('heserve-bind')

/**
 * The binding tag of one ciphertext, as lowercase hex.
 * @param {Uint8Array} bindingKey 32 random bytes registered with the keys
 * @param {Uint8Array} ciphertext the serialized ciphertext, exactly as sent
 * @returns {string}
 */
export function bindingTag(bindingKey, ciphertext) {
  const length = new Uint8Array(8)
  new DataView(length.buffer).setBigUint64(0, BigInt(ciphertext.length), true)
  return new Blake2b({ digestSize: 16, key: bindingKey, person: PERSON })
    .update(length)
    .update(ciphertext.subarray(0, TAGGED_PREFIX))
    .hex()
}

/** @returns {Uint8Array} a fresh binding key from the platform's CSPRNG */
export function newBindingKey() {
  return globalThis.crypto.getRandomValues(new Uint8Array(BINDING_KEY_BYTES))
}
