#!/usr/bin/env node
// A complete small site backend that logs visitors in with wxlogin. One file, Node 18 or later
// (Debian 12's nodejs), no dependencies: node:http, node:crypto (Ed25519 and JWKs) and the
// built-in fetch.
//
//   WXLOGIN_URL=http://127.0.0.1:8000 WXLOGIN_API_TOKEN=sandbox-… node examples/site.mjs
//   # then open http://127.0.0.1:5000/
//
// Settings (environment):
//   WXLOGIN_URL         where this backend reaches wxlogin (default http://127.0.0.1:8000)
//   WXLOGIN_PUBLIC_URL  where browsers reach wxlogin (default: WXLOGIN_URL)
//   WXLOGIN_API_TOKEN   wxlogin's API_TOKEN (the sandbox prints its own); stays on this server
//   SITE_BIND           address to listen on (default 127.0.0.1:5000)
//   SITE_ORIGIN         the origin browsers see this site at (default http://<SITE_BIND>)
//
// What it does:
//   GET  /                   the login page (the widget), or who is logged in
//   GET  /app.js             the page's script (a file, so the page can forbid inline scripts)
//   POST /api/wxlogin-token  a page token from wxlogin's POST /tokens, bound to SITE_ORIGIN
//   POST /api/login          {"login_token"}: checked offline against wxlogin's JWKS, then used
//                            up at POST /login/verify; 200 sets the session cookie, 401 invalid,
//                            409 used before (a replay), 403 from another origin
//   GET  /api/me             {"openid"} of the session, or 401
//   POST /api/logout         ends the session
//
// The login tokens must be EdDSA (the default; with LOGIN_TOKEN_SECRET wxlogin signs HS256 and
// publishes no keys, and the offline check here refuses every token).

import { createServer } from 'node:http';
import { createPublicKey, randomBytes, verify } from 'node:crypto';

const env = process.env;
const WXLOGIN_URL = (env.WXLOGIN_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const WXLOGIN_PUBLIC_URL = (env.WXLOGIN_PUBLIC_URL || WXLOGIN_URL).replace(/\/+$/, '');
const API_TOKEN = env.WXLOGIN_API_TOKEN || '';
const BIND = env.SITE_BIND || '127.0.0.1:5000';
const SITE_ORIGIN = (env.SITE_ORIGIN || `http://${BIND}`).replace(/\/+$/, '');
if (!API_TOKEN) {
  console.error("set WXLOGIN_API_TOKEN to wxlogin's API_TOKEN (the sandbox prints one in its banner)");
  process.exit(1);
}

const COOKIE = 'site_session';
const SESSION_SECS = 7 * 24 * 3600;
const MAX_BODY = 8 * 1024;
const TIMEOUT_MS = 5000;
const LEEWAY_SECS = 30;

/** A request this site answers with `status` and a short JSON error. */
class Refused extends Error {
  constructor(status, error) {
    super(error);
    this.status = status;
  }
}

/** POSTs `body` (JSON) to wxlogin with the API token: { status, body }. */
async function callWxlogin(path, body) {
  let res;
  try {
    res = await fetch(WXLOGIN_URL + path, {
      method: 'POST',
      headers: { Authorization: `Bearer ${API_TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (e) {
    console.error(`wxlogin unreachable: ${e.message}`);
    throw new Refused(502, 'login service unreachable');
  }
  const parsed = await res.json().catch(() => ({}));
  return { status: res.status, body: parsed && typeof parsed === 'object' ? parsed : {} };
}

/** A fresh page token for one login page, bound to this site's origin. */
async function pageToken() {
  const { status, body } = await callWxlogin('/tokens', { origin: SITE_ORIGIN });
  if (status !== 201 || typeof body.token !== 'string') {
    console.error(`POST /tokens answered ${status}`);
    throw new Refused(502, 'login service unavailable');
  }
  return body.token;
}

// The public keys of login tokens, by kid: cached 5 minutes, fetched again for an unknown kid
// (at most every 10 s, so forged kids cannot make this site hammer wxlogin).
const jwks = { keys: new Map(), fetchedAt: 0 };
async function keyFor(kid) {
  const age = Date.now() - jwks.fetchedAt;
  if (age > 300_000 || (!jwks.keys.has(kid) && age > 10_000)) {
    let res;
    try {
      res = await fetch(`${WXLOGIN_URL}/.well-known/jwks.json`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    } catch (e) {
      console.error(`JWKS unreachable: ${e.message}`);
      throw new Refused(502, 'login service unreachable');
    }
    const set = await res.json().catch(() => null);
    if (!res.ok || !set || !Array.isArray(set.keys)) throw new Refused(502, 'login service unavailable');
    jwks.keys = new Map();
    for (const jwk of set.keys) {
      if (jwk && jwk.kty === 'OKP' && jwk.crv === 'Ed25519' && typeof jwk.kid === 'string') {
        try {
          jwks.keys.set(jwk.kid, createPublicKey({ key: jwk, format: 'jwk' }));
        } catch { /* a key this runtime cannot read is skipped */ }
      }
    }
    jwks.fetchedAt = Date.now();
  }
  return jwks.keys.get(kid);
}

const b64json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

/** The claims of a login token signed by wxlogin for this site, or Refused(401). */
async function verifyOffline(loginToken) {
  const invalid = new Refused(401, 'invalid login token');
  const parts = loginToken.split('.');
  if (parts.length !== 3) throw invalid;
  let header;
  let claims;
  try {
    header = b64json(parts[0]);
    claims = b64json(parts[1]);
  } catch {
    throw invalid;
  }
  if (!header || typeof header !== 'object' || !claims || typeof claims !== 'object') throw invalid;
  // Only EdDSA: a token naming another algorithm ("none", HS256 with the public key) is refused.
  if (header.alg !== 'EdDSA' || typeof header.kid !== 'string') throw invalid;
  const key = await keyFor(header.kid);
  if (!key) throw invalid;
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  let good = false;
  try {
    good = verify(null, signed, key, Buffer.from(parts[2], 'base64url'));
  } catch { /* a malformed signature */ }
  if (!good) throw invalid;
  const now = Date.now() / 1000;
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  const ok = claims.iss === 'wxlogin' && aud.includes(SITE_ORIGIN)
    && typeof claims.sub === 'string' && typeof claims.jti === 'string'
    && typeof claims.exp === 'number' && claims.exp + LEEWAY_SECS > now
    && typeof claims.iat === 'number' && claims.iat - LEEWAY_SECS < now;
  if (!ok) throw invalid;
  return claims;
}

/** Has wxlogin mark the token used (once only): the openid, or Refused(401/409). */
async function useUp(loginToken) {
  const { status, body } = await callWxlogin('/login/verify', { login_token: loginToken, audience: SITE_ORIGIN });
  if (status === 200 && typeof body.sub === 'string') return body.sub;
  if (status === 409) throw new Refused(409, 'login token already used');
  if (status === 401) throw new Refused(401, 'invalid login token');
  console.error(`POST /login/verify answered ${status}`);
  throw new Refused(502, 'login service unavailable');
}

// Sessions of this example live in memory: session id -> { openid, expires }.
const sessions = new Map();
function newSession(openid) {
  const now = Date.now();
  for (const [id, s] of sessions) if (s.expires < now) sessions.delete(id);
  const id = randomBytes(32).toString('base64url');
  sessions.set(id, { openid, expires: now + SESSION_SECS * 1000 });
  return id;
}

function cookieValue(req) {
  for (const part of (req.headers.cookie || '').split(';')) {
    const [name, ...rest] = part.trim().split('=');
    if (name === COOKIE) return rest.join('=');
  }
  return null;
}

function sessionOpenid(req) {
  const id = cookieValue(req);
  const s = id && sessions.get(id);
  return s && s.expires > Date.now() ? s.openid : null;
}

const escapeHtml = (s) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function page(openid) {
  const who = openid ? `Logged in as ${openid}` : 'Scan with WeChat to log in';
  return `<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example site</title>
</head>
<body>
<h1>Example site</h1>
<p id="who">${escapeHtml(who)}</p>
<div id="wechat-login"${openid ? ' hidden' : ''}></div>
<button id="logout" type="button"${openid ? '' : ' hidden'}>Log out</button>
<script type="module" src="/app.js"></script>
</body>
</html>
`;
}

const APP_JS = `import { mount } from '${WXLOGIN_PUBLIC_URL}/wxlogin.js';

const who = document.getElementById('who');
document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/api/logout', { method: 'POST' });
  location.reload();
});
const box = document.getElementById('wechat-login');
if (!box.hidden) {
  mount(box, {
    // A fresh page token for each QR code: API_TOKEN never reaches the browser.
    getToken: async () => {
      const r = await fetch('/api/wxlogin-token', { method: 'POST' });
      if (!r.ok) throw new Error(\`page token: HTTP \${r.status}\`);
      return r.text();
    },
    // The widget shows "logged in" once this resolves, and an error if it throws.
    onLogin: async ({ login_token }) => {
      const r = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ login_token }),
      });
      if (!r.ok) throw new Error(\`login: HTTP \${r.status}\`);
      const { openid } = await r.json();
      who.textContent = \`Logged in as \${openid}\`;
      document.getElementById('logout').hidden = false;
    },
  });
}
`;

function send(res, status, body, type = 'application/json', headers = {}) {
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  });
  res.end(body);
}

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Refused(413, 'body too large');
    chunks.push(chunk);
  }
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw new Refused(400, 'body is not JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new Refused(400, 'body is not a JSON object');
  return body;
}

async function route(req, res) {
  const path = (req.url || '/').split('?')[0];
  if (req.method === 'GET' && path === '/') {
    const csp = `default-src 'self'; script-src 'self' ${WXLOGIN_PUBLIC_URL}; `
      + `connect-src 'self' ${WXLOGIN_PUBLIC_URL}; img-src 'self' ${WXLOGIN_PUBLIC_URL}; `
      + "base-uri 'none'; frame-ancestors 'none'";
    return send(res, 200, page(sessionOpenid(req)), 'text/html; charset=utf-8', { 'Content-Security-Policy': csp });
  }
  if (req.method === 'GET' && path === '/app.js') return send(res, 200, APP_JS, 'text/javascript; charset=utf-8');
  if (req.method === 'GET' && path === '/api/me') {
    const openid = sessionOpenid(req);
    if (!openid) throw new Refused(401, 'not logged in');
    return send(res, 200, JSON.stringify({ openid }));
  }
  if (req.method !== 'POST' || !['/api/wxlogin-token', '/api/login', '/api/logout'].includes(path)) {
    throw new Refused(404, 'not found');
  }
  // Browsers send Origin with every POST made by fetch; a page of another site cannot forge
  // it, so this stops it logging a visitor in (or out) behind their back.
  if (req.headers.origin !== SITE_ORIGIN) throw new Refused(403, 'cross-origin request refused');
  if (path === '/api/wxlogin-token') return send(res, 200, await pageToken(), 'text/plain; charset=utf-8');
  if (path === '/api/logout') {
    sessions.delete(cookieValue(req));
    return send(res, 200, '{}', 'application/json', { 'Set-Cookie': `${COOKIE}=; Path=/; HttpOnly; Max-Age=0` });
  }
  const { login_token: loginToken } = await readJson(req);
  if (typeof loginToken !== 'string' || !loginToken) throw new Refused(400, 'login_token is missing');
  // Offline first: a forged or foreign token costs no call to wxlogin.
  const claims = await verifyOffline(loginToken);
  // Then once only: wxlogin refuses a token that was used before (409).
  const openid = await useUp(loginToken);
  if (openid !== claims.sub) throw new Refused(401, 'invalid login token');
  const secure = SITE_ORIGIN.startsWith('https://') ? '; Secure' : '';
  const cookie = `${COOKIE}=${newSession(openid)}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${SESSION_SECS}${secure}`;
  return send(res, 200, JSON.stringify({ openid }), 'application/json', { 'Set-Cookie': cookie });
}

const server = createServer((req, res) => {
  route(req, res).catch((e) => {
    if (!(e instanceof Refused)) console.error(e);
    const status = e instanceof Refused ? e.status : 500;
    if (!res.headersSent) send(res, status, JSON.stringify({ error: e instanceof Refused ? e.message : 'internal error' }));
  });
});
const colon = BIND.lastIndexOf(':');
server.listen(Number(BIND.slice(colon + 1)), BIND.slice(0, colon) || '127.0.0.1', () => {
  console.log(`example site on ${SITE_ORIGIN} (listening on ${BIND}), wxlogin at ${WXLOGIN_URL}`);
});
