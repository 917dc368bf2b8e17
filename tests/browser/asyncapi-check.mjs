// Validates a served /asyncapi.json with the AsyncAPI Initiative's own parser (the spec's
// JSON Schema and its rules). Run by tests/browser.rs: node asyncapi-check.mjs BASE_URL
import { Parser } from '@asyncapi/parser';

const base = process.argv[2];
const response = await fetch(`${base}/asyncapi.json`);
if (!response.ok) {
  console.error(`GET /asyncapi.json answered ${response.status}`);
  process.exit(1);
}
const text = await response.text();
const { document, diagnostics } = await new Parser().parse(text);
// Severity 0 is an error; 1 a warning; 2 and 3 information and hints.
const errors = diagnostics.filter((d) => d.severity === 0);
const warnings = diagnostics.filter((d) => d.severity === 1);
for (const d of [...errors, ...warnings]) console.error(`${d.severity === 0 ? 'error' : 'warning'} ${d.code} at ${d.path.join('.')}: ${d.message}`);
if (!document || errors.length > 0) process.exit(1);
console.log(JSON.stringify({
  ok: true,
  version: document.version(),
  operations: document.operations().length,
  messages: document.allMessages().length,
  warnings: warnings.length,
}));
