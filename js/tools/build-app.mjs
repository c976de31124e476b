#!/usr/bin/env node
// The web page's build step: copies the browser files of the pinned packages from js/node_modules into
// js/app/vendor/ (gitignored), which the server serves at /app/vendor/ and the page's import map names.
//
//   cd js && node tools/build-app.mjs          (make js runs it after npm ci)
//
// Only exact versions are taken: each package's installed version must be the one js/package-lock.json
// pins (npm ci has already checked the tarball's integrity against the lock). The files are copied
// byte for byte (nothing is bundled, minified or rewritten) and listed with their sha256 in
// js/app/vendor/manifest.json. The folder is rebuilt from scratch and swapped in at once.

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const JS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const VENDOR = path.join(JS, 'app', 'vendor')

// package -> files of its dist folder the page loads. node-seal's default entry ('node-seal', the
// "throws" build: it refuses transparent ciphertexts) fetches its .wasm next to itself (import.meta.url).
const PACKAGES = {
  'node-seal': {
    from: 'dist',
    files: ['index_throws.js', 'seal_throws.js', 'seal_throws.wasm']
  }
}

class BuildError extends Error {}

function fail(message) {
  throw new BuildError(message)
}

function lockedVersion(lock, name) {
  const entry = lock.packages?.[`node_modules/${name}`]
  if (!entry?.version) fail(`${name} is not in js/package-lock.json`)
  return entry.version
}

function main() {
  const lock = JSON.parse(fs.readFileSync(path.join(JS, 'package-lock.json'), 'utf8'))
  const staging = `${VENDOR}.tmp-${process.pid}`
  fs.rmSync(staging, { recursive: true, force: true })
  fs.mkdirSync(staging, { recursive: true })
  const manifest = { generated_by: 'js/tools/build-app.mjs', packages: {} }
  try {
    for (const [name, { from, files }] of Object.entries(PACKAGES)) {
      const root = path.join(JS, 'node_modules', name)
      let installed
      try {
        installed = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version
      } catch {
        fail(`${name} is not installed in js/node_modules: run \`make js\` (npm ci) first`)
      }
      const pinned = lockedVersion(lock, name)
      if (installed !== pinned) {
        fail(`${name} ${installed} is installed, js/package-lock.json pins ${pinned}: run npm ci`)
      }
      const entry = { version: pinned, files: {} }
      for (const file of files) {
        const source = path.join(root, from, file)
        if (!fs.existsSync(source)) fail(`${name}@${pinned} has no ${from}/${file}`)
        const bytes = fs.readFileSync(source)
        fs.writeFileSync(path.join(staging, file), bytes)
        entry.files[file] = { bytes: bytes.length, sha256: crypto.createHash('sha256').update(bytes).digest('hex') }
      }
      manifest.packages[name] = entry
    }
    fs.writeFileSync(path.join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n')
    fs.rmSync(VENDOR, { recursive: true, force: true })
    fs.renameSync(staging, VENDOR)
  } finally {
    fs.rmSync(staging, { recursive: true, force: true })
  }
  const count = Object.values(manifest.packages).reduce((n, p) => n + Object.keys(p.files).length, 0)
  console.log(`build-app: ${count} files into ${path.relative(process.cwd(), VENDOR) || '.'}`)
}

try {
  main()
} catch (error) {
  console.error(`build-app: ${error instanceof BuildError ? error.message : error.stack}`)
  process.exit(1)
}
