"""Authentication: signed access tokens (JWT, via joserfc), SMART v2 scopes, local accounts.

Tokens are issued by sharedcare itself -- to staff after sign-in (local or OpenID Connect), to
SMART apps through authorization code + PKCE, to partner systems through client_credentials with
private_key_jwt, and to operators by `sharedcare admin token`. Every one carries the person (or
system), the organisation, the chosen role and the purpose; scopes can only narrow what the
governance policy allows.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from ..fhir.outcome import FHIRError, Issue
from ..store.db import read_only
from .schema import revoked_token

TOKEN_LIFETIME = 3600
ALG = "ES256"
SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.(\*|read|write|[cruds]+)$")


def load_signing_key(folder: Path) -> ECKey:
    path = folder / "signing-key.json"
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8)}, private=True)
    path.write_text(json.dumps(key.as_dict(private=True)))
    path.chmod(0o600)
    return key


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    rtype: str  # a resource type or *
    perms: frozenset[str]  # subset of c r u d s

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        m = SCOPE_RE.match(text)
        if not m:
            return None
        ctx, rtype, p = m.groups()
        perms = {"*": "cruds", "read": "rs", "write": "cud"}.get(p, p)
        return cls(ctx, rtype, frozenset(perms))

    def allows(self, rtype: str, perm: str) -> bool:
        return (self.rtype == "*" or self.rtype == rtype) and perm in self.perms


def parse_scopes(scope: str) -> list[Scope]:
    return [s for s in (Scope.parse(t) for t in scope.split()) if s is not None]


class TokenService:
    """Issues and checks sharedcare's signed tokens. With an engine, a token can be revoked
    (signing out): `verify` then looks its id up in `revoked_token` by primary key -- one
    indexed read per request, shared by every server on the database, never cached."""

    def __init__(self, key: ECKey, issuer: str = "sharedcare", engine=None):
        self.key = key
        self.issuer = issuer
        self.engine = engine
        self.reads = read_only(engine) if engine is not None else None

    def issue(self, claims: dict, lifetime: int = TOKEN_LIFETIME) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "exp": now + lifetime,
                "jti": secrets.token_hex(12), **claims}
        return jwt.encode({"alg": ALG, "kid": self.key.kid}, body, self.key)

    def verify(self, token: str) -> dict:
        """Claims of a valid token; FHIRError 401 for anything else (bad signature, expired)."""
        try:
            tok = jwt.decode(token, self.key, algorithms=[ALG])
        except (JoseError, ValueError) as e:
            raise unauthorised(f"the access token is not valid ({type(e).__name__})") from None
        claims = tok.claims
        if claims.get("iss") != self.issuer:
            raise unauthorised("the access token was not issued by this server")
        if int(claims.get("exp", 0)) < time.time():
            raise unauthorised("the access token has expired")
        if self.engine is not None:
            jti = claims.get("jti")
            if not isinstance(jti, str) or not jti or self._revoked(jti):
                raise unauthorised("the access token has been revoked (signed out)")
        return claims

    def _revoked(self, jti: str) -> bool:
        with self.reads.connect() as conn:
            return conn.execute(_revoked_row(jti)).first() is not None

    def revoke(self, token: str) -> bool:
        """Withdraw a token before it expires (signing out), on every server. A token that is
        not valid anyway (bad signature, expired, already revoked) is left alone: False."""
        if self.engine is None:
            raise RuntimeError("token revocation needs the database (TokenService(engine=...))")
        try:
            claims = self.verify(token)
        except FHIRError:
            return False
        self.revoke_ids([(claims["jti"], int(claims["exp"]))])
        return True

    def revoke_ids(self, tokens: list[tuple[str, int]]) -> None:
        """Withdraw the tokens with these (jti, expiry) on every server: what is kept of the
        access tokens a revoked refresh-token family issued (never the tokens themselves)."""
        now = int(time.time())
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        for jti, exp in tokens:
            if exp < now:
                continue  # expired anyway
            try:
                with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                    # Rows for tokens that have expired anyway are no longer needed.
                    conn.execute(delete(revoked_token).where(revoked_token.c.expires < now))
                    conn.execute(insert(revoked_token), [{"jti": jti, "expires": exp,
                                                          "revoked": stamp}])
            except IntegrityError:  # revoked at the same moment by another request: done
                pass

    def public_jwks(self) -> dict:
        return {"keys": [self.key.as_dict(private=False)]}


def _revoked_row(jti: str):
    return select(revoked_token.c.jti).where(revoked_token.c.jti == jti)


def unauthorised(diagnostics: str) -> FHIRError:
    return FHIRError(401, [Issue("login", diagnostics)],
                     {"WWW-Authenticate": 'Bearer realm="sharedcare"'})


def forbidden(diagnostics: str, reasons: list[str] | None = None) -> FHIRError:
    issues = [Issue("forbidden", diagnostics)]
    issues += [Issue("forbidden", r, severity="information") for r in reasons or []]
    return FHIRError(403, issues)


# --- local accounts --------------------------------------------------------------------------
_hasher = None


def password_hasher():
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher

        # Lighter than argon2's defaults so sign-in stays quick on a 2-core server, still
        # well above OWASP's minimum (m=19 MiB, t=2).
        _hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    return _hasher


def hash_password(password: str) -> str:
    return password_hasher().hash(password)


_dummy_hash: str | None = None


def dummy_hash() -> str:
    """A real argon2 hash of a random secret, made once per process with the same parameters
    as every stored hash, so checking against it costs exactly what a real check costs."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(32))
    return _dummy_hash


def check_password(stored: str | None, password: str) -> bool:
    """True when the password matches the stored argon2 hash. With no stored hash (an unknown
    username, an account without a local password) the same argon2 work is done against a
    dummy hash and the answer is False: how long sign-in takes does not tell anyone which
    usernames exist."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        if not stored:
            password_hasher().verify(dummy_hash(), password)
            return False
        return password_hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
