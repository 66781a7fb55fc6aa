// index.d.ts declares exactly what index.js exports: every class's methods and every export.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const soramai = require('../index.js')
const dts = fs.readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8')

function declaredMembers(className) {
  const start = dts.indexOf(`export declare class ${className} `)
  assert.ok(start >= 0, `index.d.ts declares ${className}`)
  const body = dts.slice(dts.indexOf('{', start) + 1, dts.indexOf('\n}', start))
  const names = new Set()
  for (const m of body.matchAll(/^ {2}(?:static |readonly )?([A-Za-z]\w*)\s*[(:<]/gm)) names.add(m[1])
  if (body.includes('[Symbol.asyncIterator]')) names.add('Symbol.asyncIterator')
  return names
}

function runtimeMembers(cls) {
  const names = new Set()
  for (const key of Reflect.ownKeys(cls.prototype)) {
    if (key === 'constructor') continue
    names.add(typeof key === 'symbol' ? key.description : key)
  }
  for (const key of Object.getOwnPropertyNames(cls)) {
    if (!['length', 'name', 'prototype'].includes(key)) names.add(key)
  }
  return names
}

for (const name of ['Platform', 'Session', 'TokenStream']) {
  test(`${name}: index.d.ts and index.js agree`, () => {
    assert.deepEqual([...declaredMembers(name)].sort(), [...runtimeMembers(soramai[name])].sort())
  })
}

test('every export is declared', () => {
  for (const name of Object.keys(soramai)) {
    assert.match(dts, new RegExp(`export declare (?:const|class|function) ${name}\\b`), name)
  }
})
