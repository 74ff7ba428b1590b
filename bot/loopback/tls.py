"""A throw-away certificate authority and a 127.0.0.1 server certificate for the loopback Discord.

discord.py always opens the voice websocket as ``wss://{endpoint}/?v=8`` and REST/gateway URLs are
https/wss, so the loopback Discord must speak TLS. The bot trusts the CA written here through
``DISCORD_CA_FILE`` (an ``ssl`` context built with ``cafile=``); nothing else ever trusts it.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TLSMaterial", "make_tls_material"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSMaterial:
    """Paths of a freshly generated CA and a server certificate for 127.0.0.1/localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl`` context for the server side (aiohttp ``TCPSite(ssl_context=...)``)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl`` context that trusts only this CA (what the bot builds from DISCORD_CA_FILE)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_material(directory: Path) -> TLSMaterial:
    """Generate a CA and a server certificate (P-256, valid for a month) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Back-date a little: clocks of the client and server are the same machine, but certificate
    # checks compare against "now" with second resolution.
    not_before = now - datetime.timedelta(minutes=5)
    # A month ahead: a bot process started with its clock weeks ahead (libfaketime, as the recall
    # tests do for "a week later") still finds the certificate valid.
    not_after = now + datetime.timedelta(days=31)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("voicebot loopback Discord CA"))
        .issuer_name(_name("voicebot loopback Discord CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = directory / "loopback-discord-ca.pem"
    cert_file = directory / "loopback-discord-cert.pem"
    key_file = directory / "loopback-discord-key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # The chain file carries the leaf then the CA, as servers conventionally present it.
    cert_file.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    log.debug("loopback TLS material written to %s", directory)
    return TLSMaterial(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
