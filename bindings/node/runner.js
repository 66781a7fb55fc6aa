'use strict'
// The job runner a platform's workers start for each job (`node runner.js job-runner ...`): reads
// the job from stdin and writes its events to stdout. It loads the addon by its own path, since
// jobs run with an empty environment.
const path = require('node:path')
const { jobRunner } = require(path.join(__dirname, 'soramai.node'))

let args = process.argv.slice(2)
if (args[0] === 'job-runner') args = args.slice(1)
process.exitCode = jobRunner(args)
