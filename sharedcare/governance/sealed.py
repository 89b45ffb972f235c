"""Secrets the server must keep in its database, sealed with a key that is not in it.

A partner EPR's client secret (sharedcare's credential at that EPR) has to be stored, but a copy
of the database — a backup, a replica, a support extract — must not hand it out. It is sealed
with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`, which authlib already brings) under
`keys/secrets.fernet` beside the signing key, created on first use with mode 0600.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "fernet:"


class Sealer:
    def __init__(self, keys: Path):
        self.path = Path(keys) / "secrets.fernet"
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_bytes(Fernet.generate_key())
                self.path.chmod(0o600)
            self._fernet = Fernet(self.path.read_bytes().strip())
        return self._fernet

    def seal(self, secret: str) -> str:
        return PREFIX + self._key().encrypt(secret.encode()).decode()

    def open(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(PREFIX):
            return stored  # nothing, or stored before sealing existed
        try:
            return self._key().decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise ValueError("a sealed secret does not open with this server's key "
                             f"({self.path}); register it again") from None
