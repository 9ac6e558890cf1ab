"""Gateway API keys: Bearer tokens checked in constant time; only a keyed hash of a key leaves this module.

The log stores a key's id, not the key: HMAC-SHA256 of the key under a random secret made once per install
(`PROMPTINTERN_HOME/install-secret`, mode 0600). A plain hash of a short key could be reversed by trying
keys; without the secret an id says nothing about its key. The same key keeps the same id on this install.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from gateway.api.errors import GatewayError

SECRET_FILE = "install-secret"


def install_secret(home: Path) -> bytes:
    """This install's secret, created (readable by its owner only) on first use."""
    path = Path(home) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    try:  # O_EXCL: two processes starting at once agree on the first one's secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret


def key_id(key: str, secret: bytes) -> str:
    """What the log stores instead of the key: a short HMAC of it under the install's secret."""
    return "key-" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


class Authenticator:
    """Checks `Authorization: Bearer <key>` against the configured keys. No keys configured = open gateway."""

    def __init__(self, api_keys: list[SecretStr], secret: bytes = b"") -> None:
        self._keys = [key.get_secret_value().encode() for key in api_keys]
        self._secret = secret or secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None, allow_basic: bool = False) -> str | None:
        """The caller's key id (None when auth is off); a 401 GatewayError for a missing or wrong key.

        `allow_basic`: also take the key as the password of HTTP Basic auth (any user name), which is how a
        browser can send it to the dashboard.
        """
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if allow_basic and scheme.lower() == "basic":
            token = _basic_password(token)
        elif scheme.lower() != "bearer":
            token = ""
        if not token.strip():
            raise GatewayError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>' with a gateway API key.",
                code="invalid_api_key",
            )
        candidate = token.strip().encode()
        # Compare against every key, without stopping at a match, so timing reveals neither key nor position.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")
        return key_id(candidate.decode(), self._secret)


def _basic_password(token: str) -> str:
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]
