// Shared by main.js and post.js: inputs, workflow commands and calls to the nhi binary.
// No dependencies: the runner's Node.js alone.
'use strict';
const { execFileSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');

function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
}

// `::add-mask::` for every line of a value, before it is ever set or exported.
function mask(value) {
  for (const line of String(value).split(/\r?\n/)) {
    if (line.trim() !== '') process.stdout.write(`::add-mask::${line}\n`);
  }
}

// Append `key<<delimiter` to a GitHub file command (GITHUB_OUTPUT, GITHUB_ENV, GITHUB_STATE).
function fileCommand(variable, key, value) {
  const file = process.env[variable];
  if (!file) throw new Error(`${variable} is not set: not running in GitHub Actions?`);
  const delimiter = `ghadelimiter_${crypto.randomUUID()}`;
  if (String(value).includes(delimiter)) throw new Error('value contains the delimiter');
  fs.appendFileSync(file, `${key}<<${delimiter}\n${value}\n${delimiter}\n`);
}

// Run nhi with this job's GitHub identity; parsed JSON from its stdout (errors stay on stderr).
function nhi(args) {
  const base = ['--url', input('url'), '--github-actions', '--subject-audience', input('subject-audience') || 'nhi-broker'];
  const stdout = execFileSync(input('nhi') || 'nhi', [...base, '--output', 'json', ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return stdout.trim() === '' ? {} : JSON.parse(stdout);
}

function fail(message) {
  process.stdout.write(`::error::${message.replace(/\r?\n/g, ' ')}\n`);
  process.exitCode = 1;
}

module.exports = { input, mask, fileCommand, nhi, fail };
