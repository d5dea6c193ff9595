"""Certificates for TLS on the broker and the REST APIs: `derbus certs` (a private CA).

`make_certs` writes, in one folder:

- `ca.crt` / `ca.key`: a private certificate authority (clients trust `ca.crt`);
- `server.crt` / `server.key`: the broker's and the APIs' certificate, valid for the given host
  names and addresses (`localhost`, `127.0.0.1` and `mosquitto` by default);
- `<name>.crt` / `<name>.key` for each client name: client certificates for a listener with
  `require_certificate true` (common name = the name, e.g. the service's broker user).

Private keys are written mode 0600; an existing CA is reused, so new client certificates can be
issued later without re-issuing every certificate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from derbus.acl import write_private

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "mosquitto")


@dataclass(frozen=True)
class CertFiles:
    """Paths of what `make_certs` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_or_make_ca(
    folder: Path, days: int, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = folder / "ca.crt", folder / "ca.key"
    if crt.exists() and key_path.exists():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC key written by derbus certs")
        return x509.load_pem_x509_certificate(crt.read_bytes()), loaded
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "derbus private CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    days: int,
    now: datetime,
    hosts: Iterable[str] = (),
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_certs(
    folder: Path,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    clients: Iterable[str] = (),
    days: int = 825,
    now: datetime | None = None,
) -> CertFiles:
    """Write (or reuse) certificates into `folder`.

    The CA, a server certificate for `hosts` and one client certificate per name in `clients`.
    """
    now = now or datetime.now(UTC)
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_or_make_ca(folder, days, now)
    hosts = list(hosts)
    server, server_key = _issue(ca, ca_key, hosts[0] if hosts else "derbus", days, now, hosts)
    paths = CertFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key", {})
    write_private(paths.server_key, _key_pem(server_key))
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"client name {name!r} cannot be a file name")
        cert, key = _issue(ca, ca_key, name, days, now, client=True)
        crt, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        write_private(key_path, _key_pem(key))
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.clients[name] = (crt, key_path)
    return paths
