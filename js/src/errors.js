// The SDK's errors: one base class with the HTTP status and the server's machine-readable code, and a
// class per kind of failure a caller may want to handle (client/errors.py is the Python SDK's set).

/**
 * Base class of every error the SDK throws.
 *
 * `status`: the HTTP status the server answered (0 when no answer came: network failure, timeout, or
 * an error found on the client). `code`: the server's machine-readable kind of error, e.g.
 * "model_not_found", "key_not_found", "binding_mismatch" (or the SDK's own, e.g. "unreachable",
 * "timeout", "invalid_input"). `message`: the server's explanation (or the SDK's).
 */
export class HEServeError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string | null, cause?: unknown}} [options]
   */
  constructor(message, { status = 0, code = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = new.target.name
    /** @type {number} */
    this.status = status
    /** @type {string | null} */
    this.code = code
  }
}

/** The server could not be reached (network failure, server down, connection broken), or answered 5xx. */
export class ServerUnavailableError extends HEServeError {}

/** No answer within the client's timeout (`timeoutMs`). */
export class RequestTimeoutError extends ServerUnavailableError {}

/** 401/403: a missing or wrong API key, or a role that may not do this. */
export class AuthenticationError extends HEServeError {}

/** 404: an unknown model (code "model_not_found"), or a key id unknown, expired or erased ("key_not_found"). */
export class NotFoundError extends HEServeError {}

/** 400 and the other 4xx the server refuses a request with (bad input, binding_mismatch, body too large...). */
export class BadRequestError extends HEServeError {}

/** 429: a quota is exhausted. `retryAfter`: seconds to wait, from the Retry-After header (null if absent). */
export class QuotaError extends HEServeError {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string | null, retryAfter?: number | null}} [options]
   */
  constructor(message, { status = 429, code = null, retryAfter = null } = {}) {
    super(message, { status, code })
    /** @type {number | null} */
    this.retryAfter = retryAfter
  }
}

/** Rows the SDK cannot encrypt for the model: wrong shape, not numbers, NaN, unknown layout (found locally). */
export class InputError extends HEServeError {
  /** @param {string} message */
  constructor(message) {
    super(message, { code: 'invalid_input' })
  }
}

/** The server's answer or metadata is not what the protocol says (malformed body, wrong ciphertext count...). */
export class ProtocolError extends HEServeError {
  /** @param {string} message @param {string} [code] */
  constructor(message, code = 'malformed_response') {
    super(message, { code })
  }
}

/** A stored key that cannot be read, or whose parameters do not match the model's. */
export class KeyStoreError extends HEServeError {
  /** @param {string} message @param {unknown} [cause] */
  constructor(message, cause) {
    super(message, { code: 'key_store', cause })
  }
}

/**
 * The error for an HTTP error answer.
 * @param {number} status
 * @param {string} message the server's "error" field (it becomes the error's message as it is)
 * @param {string | null} code the server's "code" field
 * @param {number | null} [retryAfter] seconds, from Retry-After
 * @returns {HEServeError}
 */
export function errorForStatus(status, message, code, retryAfter = null) {
  const text = message || `the server answered HTTP ${status}`
  if (status === 401 || status === 403) return new AuthenticationError(text, { status, code })
  if (status === 404) return new NotFoundError(text, { status, code })
  if (status === 429) return new QuotaError(text, { status, code, retryAfter })
  if (status >= 500) return new ServerUnavailableError(text, { status, code })
  return new BadRequestError(text, { status, code })
}
