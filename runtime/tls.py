"""TLS contexts for the public port and its clients: TLS 1.2 or later, a server's certificate and
key from files, and clients that verify the server against a CA file (never unverified)."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from prometheus_client import Gauge

CERTIFICATE_EXPIRY = Gauge(
    "regiongate_tls_certificate_expiry_timestamp_seconds",
    "When the certificate this process serves HTTPS with stops being valid",
)


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context from certificate and key files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    CERTIFICATE_EXPIRY.set(certificate.not_valid_after_utc.timestamp())
    return context


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A verifying client context that trusts ca_file."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
