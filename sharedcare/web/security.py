"""Security headers and cookie flags for every response: pages, CSV, JSON and the FHIR API.

One ASGI middleware (outermost, so nothing escapes it):

- `Content-Security-Policy`: scripts only from this server (the pages' scripts are files under
  /static, no inline script), nothing can frame the pages, no plugins, no <base> tricks.
  Inline *style attributes* are still allowed ('unsafe-inline' for styles only): several
  templates use them for layout, and styles cannot run code.
- `X-Frame-Options: DENY` (older browsers), `X-Content-Type-Options: nosniff`,
  `Referrer-Policy: no-referrer` (page addresses carry patient ids), `Permissions-Policy`,
  `Cross-Origin-Opener-Policy`.
- `Cache-Control: no-store` on everything but /static: patient data must not sit in a shared
  or back-button browser cache. Static assets keep their own caching.
- Behind HTTPS -- the request's scheme is https, or a proxy we were told to trust
  (`SHAREDCARE_TRUST_PROXY=1`) sent `X-Forwarded-Proto: https` -- every cookie gets `Secure`
  and responses carry `Strict-Transport-Security`. `X-Forwarded-Proto` from anyone else is
  ignored: a client could send it to anything.
"""

from __future__ import annotations

import os

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
       "base-uri 'self'; frame-ancestors 'none'")
HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"permissions-policy": b"camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    b"cross-origin-opener-policy": b"same-origin",
}
NO_STORE = b"no-store"
HSTS = b"max-age=31536000"
STATIC_PREFIX = "/static/"


def trust_proxy_from_env() -> bool:
    return os.environ.get("SHAREDCARE_TRUST_PROXY", "").strip().lower() in ("1", "true", "yes")


def is_https(scope, trust_proxy: bool) -> bool:
    """The request reached us over HTTPS: directly, or through a proxy we trust."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    if trust_proxy:
        for k, v in scope.get("headers", ()):
            if k == b"x-forwarded-proto":
                # The proxy nearest the client is first: "https, http" means the browser used https.
                return v.decode("latin-1").split(",")[0].strip().lower() == "https"
    return False


def secure_cookie(value: bytes) -> bytes:
    attrs = {a.strip().lower() for a in value.split(b";")[1:]}
    return value if b"secure" in attrs else value + b"; Secure"


class SecurityMiddleware:
    def __init__(self, app, trust_proxy: bool | None = None):
        self.app = app
        self.trust_proxy = trust_proxy_from_env() if trust_proxy is None else trust_proxy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = is_https(scope, self.trust_proxy)
        if https and scope.get("scheme") != "https":
            scope = {**scope, "scheme": "https"}  # so redirects and request.url say https
        static = scope.get("path", "").startswith(STATIC_PREFIX)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                headers = []
                for k, v in message.get("headers", ()):
                    k = k.lower()
                    if k in HEADERS or (k == b"cache-control" and not static) \
                            or (k == b"pragma" and not static):
                        continue  # ours win: a handler cannot weaken them by accident
                    if k == b"set-cookie" and https:
                        v = secure_cookie(v)
                    headers.append((k, v))
                headers += HEADERS.items()
                if not static:
                    headers.append((b"cache-control", NO_STORE))
                if https:
                    headers.append((b"strict-transport-security", HSTS))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)
