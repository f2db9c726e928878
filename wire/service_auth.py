"""Service-to-service authentication for the internal ledger API: HMAC-SHA256 signed requests.

Why signed requests rather than mutual TLS: a signature authenticates each request, not just the
connection, and it covers the method, the path, the body's digest, the idempotency key and a
timestamp. A proxy or load balancer between a gateway and a ledger node (or a WAN hop between
regions) can then neither forge a call nor alter an amount in flight, and the check costs a few
microseconds on a pooled keep-alive connection, with no handshake on the hot path. Keys are
looked up by id, so rotation is: add the new key everywhere, switch signers to it, drop the old.
Confidentiality on the wire is a separate concern (TLS on the ledger port, or the network).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

from wire.errors import ConfigError

KEY_ID_HEADER = "X-RG-Key-Id"
TIMESTAMP_HEADER = "X-RG-Timestamp"
SIGNATURE_HEADER = "X-RG-Signature"
SECRET_LENGTH_MIN_BYTES = 32


@dataclass(frozen=True, slots=True)
class ServiceKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print a secret, even by accident
        return f"ServiceKey(key_id={self.key_id!r}, secret=<{len(self.secret)} bytes>)"


class ServiceKeyring:
    """Keys by id. The first key is the one this process signs with."""

    def __init__(self, keys: list[ServiceKey]) -> None:
        if not keys:
            raise ConfigError("service keyring must hold at least one key")
        for key in keys:
            if len(key.secret) < SECRET_LENGTH_MIN_BYTES:
                raise ConfigError(
                    f"service key {key.key_id!r} is {len(key.secret)} bytes; "
                    f"at least {SECRET_LENGTH_MIN_BYTES} are required"
                )
        self._keys = {key.key_id: key for key in keys}
        self.signing_key = keys[0]

    def get(self, key_id: str) -> ServiceKey | None:
        return self._keys.get(key_id)

    @classmethod
    def parse(cls, text: str) -> ServiceKeyring:
        """'key_id: secret' per line (or comma separated); '#' starts a comment."""
        keys = []
        for raw in text.replace(",", "\n").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key_id, sep, secret = line.partition(":")
            if not sep or not key_id.strip() or not secret.strip():
                raise ConfigError("service keys must be 'key_id: secret' entries")
            keys.append(ServiceKey(key_id.strip(), secret.strip().encode()))
        return cls(keys)

    @classmethod
    def load(cls, path: str | None) -> ServiceKeyring:
        if path:
            try:
                return cls.parse(Path(path).read_text())
            except OSError as exc:
                raise ConfigError(f"cannot read service keys file {path}: {exc}") from exc
        text = os.environ.get("REGIONGATE_SERVICE_KEYS")
        if not text:
            raise ConfigError(
                "no service keys: set service_keys_file in the config "
                "or REGIONGATE_SERVICE_KEYS='key_id:secret'"
            )
        return cls.parse(text)


def _string_to_sign(method: str, path_qs: str, timestamp: str, body: bytes, idem: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path_qs}\n{timestamp}\n{idem}\n{digest}".encode()


def sign(
    key: ServiceKey, method: str, path_qs: str, body: bytes, idempotency_key: str = ""
) -> dict[str, str]:
    """The headers that authenticate one request."""
    timestamp = str(int(time.time()))
    return {
        KEY_ID_HEADER: key.key_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: _mac(
            key, _string_to_sign(method, path_qs, timestamp, body, idempotency_key)
        ),
    }


def _mac(key: ServiceKey, message: bytes) -> str:
    # hmac.digest is OpenSSL's one-shot HMAC, without hmac.new's Python-level object: it runs on
    # every request at both ends of every internal hop.
    return hmac.digest(key.secret, message, "sha256").hex()


def verify(
    keyring: ServiceKeyring,
    headers: dict[str, str] | object,
    method: str,
    path_qs: str,
    body: bytes,
    skew_s_max: int,
) -> str | None:
    """The key id that signed the request, or None if the signature is missing or wrong."""
    get = headers.get  # type: ignore[attr-defined]
    key_id, timestamp, signature = get(KEY_ID_HEADER), get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER)
    if not key_id or not timestamp or not signature or not timestamp.isdigit():
        return None
    if abs(int(timestamp) - time.time()) > skew_s_max:
        return None
    key = keyring.get(key_id)
    if key is None:
        return None
    idempotency_key = get("Idempotency-Key") or ""
    expected = _mac(key, _string_to_sign(method, path_qs, timestamp, body, idempotency_key))
    if not hmac.compare_digest(expected, signature):
        return None
    return key_id
