// Drives a fabric with the independent npm `openwhisk` client (apache/openwhisk-client-js).
// Usage: node openwhisk_client.js APIHOST API_KEY ACTION_ZIP
// Prints one JSON summary line; exits non-zero (with the reason on stderr) when a step fails.
'use strict'

const assert = require('node:assert/strict')
const fs = require('node:fs')
const openwhisk = require('openwhisk')

const [apihost, apiKey, zipPath] = process.argv.slice(2)
const ow = openwhisk({ apihost, api_key: apiKey })
const name = `conformance-${process.pid}`

async function waitForActivation (activationId) {
  for (let i = 0; i < 200; i++) {
    try {
      return await ow.activations.get({ activationId })
    } catch (err) {
      assert.equal(err.statusCode, 404, `GET activation failed: ${err.message}`)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  throw new Error(`activation ${activationId} never appeared`)
}

async function main () {
  const summary = {}

  // 1. create an action from a zip (the client base64-encodes the Buffer, without a binary flag)
  const created = await ow.actions.create({ name, action: fs.readFileSync(zipPath), kind: 'python:3', params: { bound: 'b' } })
  assert.equal(created.name, name)
  assert.equal(created.version, '0.0.1')
  assert.equal(created.exec.binary, true)
  summary.created = created.version

  // 2. invoke non-blocking: the activation id comes back at once
  const started = await ow.actions.invoke({ name, params: { x: 1 } })
  assert.match(started.activationId, /^[0-9a-f]{32}$/)
  summary.activationId = started.activationId

  // 3. read the activation, its result and its logs
  const record = await waitForActivation(started.activationId)
  assert.equal(record.activationId, started.activationId)
  assert.equal(record.response.status, 'success')
  assert.equal(record.response.success, true)
  assert.deepEqual(record.response.result.params, { bound: 'b', x: 1 })
  const result = await ow.activations.result({ activationId: started.activationId })
  assert.deepEqual(result.result, record.response.result)
  const logs = await ow.activations.logs({ activationId: started.activationId })
  assert.ok(logs.logs.some(line => line.includes('stdout: running conformance')), JSON.stringify(logs))
  const listed = await ow.activations.list({ name, docs: true, limit: 10 })
  assert.ok(listed.some(a => a.activationId === started.activationId))
  summary.status = record.response.status

  // 4. blocking success with result=true
  const only = await ow.actions.invoke({ name, params: { x: 2 }, blocking: true, result: true })
  assert.deepEqual(only.params, { bound: 'b', x: 2 })

  // 5. blocking application error: a 502 rejection carrying the activation record
  try {
    await ow.actions.invoke({ name, params: { fail: 'refused' }, blocking: true })
    assert.fail('an application error must reject')
  } catch (err) {
    assert.equal(err.statusCode, 502, err.message)
    assert.match(err.message, /Returned HTTP 502 \(Bad Gateway\) --> "refused"/)
    assert.equal(err.error.response.status, 'application error')
    assert.deepEqual(err.error.response.result, { error: 'refused' })
    summary.applicationError = err.statusCode
  }

  // 6. delete, then 404
  const deleted = await ow.actions.delete({ name })
  assert.equal(deleted.name, name)
  try {
    await ow.actions.get({ name })
    assert.fail('a deleted action must be gone')
  } catch (err) {
    assert.equal(err.statusCode, 404, err.message)
    assert.equal(err.error.error, 'The requested resource does not exist.')
    summary.afterDelete = err.statusCode
  }
  try {
    await ow.actions.invoke({ name })
    assert.fail('invoking a deleted action must fail')
  } catch (err) {
    assert.equal(err.statusCode, 404, err.message)
  }

  console.log(JSON.stringify(summary))
}

main().catch(err => {
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})
