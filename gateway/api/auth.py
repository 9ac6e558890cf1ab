"""Gateway API keys: Bearer tokens checked in constant time; only a hash of a key leaves this module."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from pydantic import SecretStr

from gateway.api.errors import GatewayError


def key_id(key: str) -> str:
    """What the log stores instead of the key: a short sha256 prefix (stable, not reversible)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class Authenticator:
    """Checks `Authorization: Bearer <key>` against the configured keys. No keys configured = open gateway."""

    def __init__(self, api_keys: list[SecretStr]) -> None:
        self._keys = [key.get_secret_value().encode() for key in api_keys]

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
        return key_id(candidate.decode())


def _basic_password(token: str) -> str:
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]
