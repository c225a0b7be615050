// Validates AsyncAPI documents as `asyncapi validate` (@asyncapi/cli) does, with the same
// libraries: @asyncapi/parser and its Avro schema parser (the versions of
// deploy/asyncapi/package-lock.json, which the CLI 4.1.1 resolves to as well). The CLI
// itself is 1.5 GB of npm packages (its generator, a Next.js studio) and from 5.0 needs
// Node 24; the parser alone is 55 MB.
//
//   node deploy/asyncapi/validate.mjs --modules <node_modules> <document>...
//
// Prints every diagnostic (severity, rule, path, message) and exits 1 when any is an
// error or a warning (the CLI fails on errors only: a warning here is a document that says
// less than it should), 2 on bad usage. `--modules` is where deploy/install.sh put the
// parser ($SOMA_HOME/npm/asyncapi-<hash>/node_modules), so nothing is installed in the
// checkout. The parser resolves the document's $refs (the .avsc files) relative to it.
import { createRequire } from 'node:module';
import path from 'node:path';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

function usage(message) {
  console.error(`${message}\nusage: validate.mjs --modules <node_modules> <document>...`);
  process.exit(2);
}

const args = process.argv.slice(2);
const at = args.indexOf('--modules');
if (at < 0 || !args[at + 1]) usage('--modules is required');
const modules = path.resolve(args[at + 1]);
const documents = args.filter((_, i) => i !== at && i !== at + 1);
if (documents.length === 0) usage('no document given');

const require = createRequire(path.join(modules, '..', 'package.json'));
const { Parser, fromFile } = require('@asyncapi/parser');
const { AvroSchemaParser } = require('@asyncapi/avro-schema-parser');

const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());

let failed = false;
for (const document of documents) {
  const { document: parsed, diagnostics } = await fromFile(parser, document).parse();
  const counts = [0, 0, 0, 0];
  for (const d of diagnostics) {
    counts[d.severity] += 1;
    const where = d.path.length ? d.path.join('.') : '(document)';
    console.log(`${document}: ${SEVERITY[d.severity]} ${d.code} at ${where}: ${d.message}`);
  }
  const bad = parsed === undefined || counts[0] > 0 || counts[1] > 0;
  failed ||= bad;
  const summary = SEVERITY.map((name, i) => `${counts[i]} ${name}s`).join(', ');
  console.log(`${document}: ${bad ? 'INVALID' : 'valid'} (${summary})`);
}
process.exit(failed ? 1 : 0);
