#!/usr/bin/env python3
"""A complete small site backend that logs visitors in with wxlogin. One file: the standard
library and PyJWT (pip install "pyjwt[crypto]").

    WXLOGIN_URL=http://127.0.0.1:8000 WXLOGIN_API_TOKEN=sandbox-… python3 examples/site.py
    # then open http://127.0.0.1:5000/

Settings (environment):
  WXLOGIN_URL         where this backend reaches wxlogin (default http://127.0.0.1:8000)
  WXLOGIN_PUBLIC_URL  where browsers reach wxlogin (default: WXLOGIN_URL)
  WXLOGIN_API_TOKEN   wxlogin's API_TOKEN (the sandbox prints its own); stays on this server
  SITE_BIND           address to listen on (default 127.0.0.1:5000)
  SITE_ORIGIN         the origin browsers see this site at (default http://<SITE_BIND>)

What it does:
  GET  /                   the login page (the widget), or who is logged in
  GET  /app.js             the page's script (a file, so the page can forbid inline scripts)
  POST /api/wxlogin-token  a page token from wxlogin's POST /tokens, bound to SITE_ORIGIN
  POST /api/login          {"login_token"}: checked offline against wxlogin's JWKS, then used up
                           at POST /login/verify; 200 sets the session cookie, 401 invalid,
                           409 used before (a replay), 403 from another origin
  GET  /api/me             {"openid"} of the session, or 401
  POST /api/logout         ends the session

The login tokens must be EdDSA (the default; with LOGIN_TOKEN_SECRET wxlogin signs HS256 and
publishes no keys, and the offline check here refuses every token).
"""

import json
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import jwt  # PyJWT
except ImportError:
    sys.exit('examples/site.py needs PyJWT with its crypto extra: pip install "pyjwt[crypto]"')

WXLOGIN_URL = os.environ.get("WXLOGIN_URL", "http://127.0.0.1:8000").rstrip("/")
WXLOGIN_PUBLIC_URL = os.environ.get("WXLOGIN_PUBLIC_URL", WXLOGIN_URL).rstrip("/")
API_TOKEN = os.environ.get("WXLOGIN_API_TOKEN", "")
BIND = os.environ.get("SITE_BIND", "127.0.0.1:5000")
HOST, _, PORT = BIND.rpartition(":")
SITE_ORIGIN = os.environ.get("SITE_ORIGIN", f"http://{BIND}").rstrip("/")
if not API_TOKEN:
    sys.exit("set WXLOGIN_API_TOKEN to wxlogin's API_TOKEN (the sandbox prints one in its banner)")

COOKIE = "site_session"
SESSION_SECS = 7 * 24 * 3600
MAX_BODY = 8 * 1024
TIMEOUT = 5

# The public keys of login tokens; PyJWKClient caches them and fetches again for a new kid.
JWKS = jwt.PyJWKClient(f"{WXLOGIN_URL}/.well-known/jwks.json", lifespan=300, timeout=TIMEOUT)

# Sessions of this example live in memory: session id -> (openid, expiry).
sessions = {}
sessions_lock = threading.Lock()


class Refused(Exception):
    """A request this site answers with `status` and a short JSON error."""

    def __init__(self, status, error):
        super().__init__(error)
        self.status = status
        self.error = error


def call_wxlogin(path, body):
    """POST `body` (JSON) to wxlogin with the API token: (status, parsed JSON body)."""
    req = urllib.request.Request(
        WXLOGIN_URL + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        print(f"wxlogin unreachable: {e}", file=sys.stderr)
        raise Refused(502, "login service unreachable") from None
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {}


def page_token():
    """A fresh page token for one login page, bound to this site's origin."""
    status, body = call_wxlogin("/tokens", {"origin": SITE_ORIGIN})
    if status != 201 or not isinstance(body.get("token"), str):
        print(f"POST /tokens answered {status}", file=sys.stderr)
        raise Refused(502, "login service unavailable")
    return body["token"]


def verify_offline(login_token):
    """The claims of a login token signed by wxlogin for this site, or Refused(401)."""
    try:
        key = JWKS.get_signing_key_from_jwt(login_token).key
        return jwt.decode(
            login_token,
            key,
            algorithms=["EdDSA"],
            audience=SITE_ORIGIN,
            issuer="wxlogin",
            options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
        )
    except jwt.PyJWKClientConnectionError:
        raise Refused(502, "login service unreachable") from None
    except jwt.PyJWTError:
        # Forged, expired, for another site, or a key wxlogin does not publish.
        raise Refused(401, "invalid login token") from None


def use_up(login_token):
    """Has wxlogin mark the token used (once only): the openid, or Refused(401/409)."""
    status, body = call_wxlogin(
        "/login/verify", {"login_token": login_token, "audience": SITE_ORIGIN}
    )
    if status == 200 and isinstance(body.get("sub"), str):
        return body["sub"]
    if status == 409:
        raise Refused(409, "login token already used")
    if status == 401:
        raise Refused(401, "invalid login token")
    print(f"POST /login/verify answered {status}", file=sys.stderr)
    raise Refused(502, "login service unavailable")


def new_session(openid):
    sid = secrets.token_urlsafe(32)
    with sessions_lock:
        now = time.time()
        for old in [k for k, (_, exp) in sessions.items() if exp < now]:
            del sessions[old]
        sessions[sid] = (openid, now + SESSION_SECS)
    return sid


PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example site</title>
</head>
<body>
<h1>Example site</h1>
<p id="who">{who}</p>
<div id="wechat-login"{hidden}></div>
<button id="logout" type="button"{logout_hidden}>Log out</button>
<script type="module" src="/app.js"></script>
</body>
</html>
"""

APP_JS = """import { mount } from '%s/wxlogin.js';

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
      if (!r.ok) throw new Error(`page token: HTTP ${r.status}`);
      return r.text();
    },
    // The widget shows "logged in" once this resolves, and an error if it throws.
    onLogin: async ({ login_token }) => {
      const r = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ login_token }),
      });
      if (!r.ok) throw new Error(`login: HTTP ${r.status}`);
      const { openid } = await r.json();
      who.textContent = `Logged in as ${openid}`;
      document.getElementById('logout').hidden = false;
    },
  });
}
"""


def html_escape(s):
    return (
        s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


class Site(BaseHTTPRequestHandler):
    server_version = "example-site"

    def log_message(self, fmt, *args):
        # The default log writes every request line; keep it quiet but for errors.
        pass

    def send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj, headers=()):
        self.send(status, json.dumps(obj), headers=headers)

    def session_openid(self):
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except cookies.CookieError:
            return None
        morsel = jar.get(COOKIE)
        if morsel is None:
            return None
        with sessions_lock:
            found = sessions.get(morsel.value)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def require_same_origin(self):
        # Browsers send Origin with every POST made by fetch; a page of another site cannot
        # forge it, so this stops it logging a visitor in (or out) behind their back.
        if self.headers.get("Origin") != SITE_ORIGIN:
            raise Refused(403, "cross-origin request refused")

    def read_json(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise Refused(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise Refused(413, "body too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise Refused(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "body is not a JSON object")
        return body

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        try:
            if path == "/":
                self.page()
            elif path == "/app.js":
                self.send(200, APP_JS % WXLOGIN_PUBLIC_URL, "text/javascript; charset=utf-8")
            elif path == "/api/me":
                openid = self.session_openid()
                if openid is None:
                    raise Refused(401, "not logged in")
                self.send_json(200, {"openid": openid})
            else:
                raise Refused(404, "not found")
        except Refused as r:
            self.send_json(r.status, {"error": r.error})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        try:
            if path not in ("/api/wxlogin-token", "/api/login", "/api/logout"):
                raise Refused(404, "not found")
            self.require_same_origin()
            if path == "/api/wxlogin-token":
                self.send(200, page_token(), "text/plain; charset=utf-8")
            elif path == "/api/login":
                self.login()
            else:
                self.logout()
        except Refused as r:
            self.send_json(r.status, {"error": r.error})

    def page(self):
        openid = self.session_openid()
        who = f"Logged in as {openid}" if openid else "Scan with WeChat to log in"
        body = PAGE.format(
            who=html_escape(who),
            hidden=" hidden" if openid else "",
            logout_hidden="" if openid else " hidden",
        )
        csp = (
            f"default-src 'self'; script-src 'self' {WXLOGIN_PUBLIC_URL}; "
            f"connect-src 'self' {WXLOGIN_PUBLIC_URL}; img-src 'self' {WXLOGIN_PUBLIC_URL}; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        self.send(200, body, "text/html; charset=utf-8", [("Content-Security-Policy", csp)])

    def login(self):
        login_token = self.read_json().get("login_token")
        if not isinstance(login_token, str) or not login_token:
            raise Refused(400, "login_token is missing")
        # Offline first: a forged or foreign token costs no call to wxlogin.
        claims = verify_offline(login_token)
        # Then once only: wxlogin refuses a token that was used before (409).
        openid = use_up(login_token)
        if openid != claims["sub"]:
            raise Refused(401, "invalid login token")
        secure = "; Secure" if SITE_ORIGIN.startswith("https://") else ""
        cookie = (
            f"{COOKIE}={new_session(openid)}; Path=/; HttpOnly; SameSite=Lax; "
            f"Max-Age={SESSION_SECS}{secure}"
        )
        self.send_json(200, {"openid": openid}, [("Set-Cookie", cookie)])

    def logout(self):
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except cookies.CookieError:
            pass
        if COOKIE in jar:
            with sessions_lock:
                sessions.pop(jar[COOKIE].value, None)
        self.send_json(200, {}, [("Set-Cookie", f"{COOKIE}=; Path=/; HttpOnly; Max-Age=0")])


def main():
    server = ThreadingHTTPServer((HOST or "127.0.0.1", int(PORT)), Site)
    server.daemon_threads = True
    print(f"example site on {SITE_ORIGIN} (listening on {BIND}), wxlogin at {WXLOGIN_URL}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
