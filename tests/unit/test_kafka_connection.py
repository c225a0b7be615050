"""Who a process is to the broker: its login comes from one place (KafkaConnection), from
its own credentials file or KAFKA_PASSWORD; production never connects anonymously, and
only over TLS (SASL_SSL), checking the broker's certificate against KAFKA_SSL_CAFILE."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from gateway_runtime import kafka_credentials as creds
from gateway_runtime.kafka import KafkaConnection, KafkaCredentialsMissing
from gateway_runtime.settings import CommonSettings
from soma_cli.__main__ import main

PRODUCTION: dict[str, Any] = {
    "soma_profile": "production",
    "kafka_bootstrap_servers": "kafka-0.kafka:9092",
    "postgres_dsn": "postgresql://soma:s3cret-from-a-vault@db.internal:5432/soma",
    "redis_url": "redis://redis.internal:6379/0",
    "openfga_api_url": "http://openfga.internal:8080",
    "opa_url": "http://opa.internal:8181",
    "kafka_security_protocol": "SASL_SSL",
}


def _write(directory: Path, principal: str, password: str) -> None:
    creds.write(
        creds.credentials_file(directory, principal), creds.Credentials(principal, password)
    )


def test_a_service_logs_in_as_itself_with_its_own_file(tmp_path: Path) -> None:
    _write(tmp_path, "llm_worker", "llm-secret")
    _write(tmp_path, creds.ADMIN, "admin-secret")
    settings = CommonSettings(service_name="llm_worker", kafka_credentials_dir=tmp_path)
    kwargs = KafkaConnection.from_settings(settings).client_kwargs()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "llm_worker",
        "llm-secret",
    )
    # Any other process (provisioning, the CLI, tests) is the admin.
    other = CommonSettings(service_name="provision", kafka_credentials_dir=tmp_path)
    assert KafkaConnection.from_settings(other).username == creds.ADMIN
    assert "secret" not in repr(KafkaConnection.from_settings(settings))


def test_username_and_password_from_the_environment_win(tmp_path: Path) -> None:
    _write(tmp_path, "ingress", "from-file")
    settings = CommonSettings(
        service_name="ingress",
        kafka_credentials_dir=tmp_path,
        kafka_username="ingress-2",
        kafka_password="from-a-vault",
    )
    kafka = KafkaConnection.from_settings(settings)
    assert (kafka.username, kafka.password, kafka.sasl) == ("ingress-2", "from-a-vault", True)
    # Another principal's login never takes this process's own password.
    with pytest.raises(KafkaCredentialsMissing, match="principal 'admin'"):
        KafkaConnection.from_settings(settings, principal="admin")


def test_no_credentials_is_an_error_and_anonymous_only_when_asked_for(tmp_path: Path) -> None:
    """No silent fallback to an anonymous connection (a broker without the boundary)."""
    for protocol in ("auto", "SASL_PLAINTEXT"):
        settings = CommonSettings(
            service_name="ingress",
            kafka_credentials_dir=tmp_path / "none",
            kafka_security_protocol=protocol,  # type: ignore[arg-type]
        )
        with pytest.raises(
            KafkaCredentialsMissing, match="no Kafka credentials for principal 'ingress'"
        ):
            KafkaConnection.from_settings(settings)
    plain = CommonSettings(
        service_name="ingress",
        kafka_credentials_dir=tmp_path / "none",
        kafka_security_protocol="PLAINTEXT",
    )
    assert KafkaConnection.from_settings(plain).client_kwargs() == {
        "bootstrap_servers": plain.kafka_bootstrap_servers,
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT", "auto"])
def test_production_refuses_kafka_without_sasl_over_tls(protocol: str) -> None:
    with pytest.raises(ValidationError, match=f"KAFKA_SECURITY_PROTOCOL={protocol}"):
        CommonSettings(**{**PRODUCTION, "kafka_security_protocol": protocol})


def test_production_logs_in_over_tls(tmp_path: Path) -> None:
    missing = CommonSettings(**PRODUCTION, kafka_credentials_dir=tmp_path, service_name="ingress")
    with pytest.raises(KafkaCredentialsMissing):
        KafkaConnection.from_settings(missing)
    _write(tmp_path, "ingress", "s3cret")
    kwargs = KafkaConnection.from_settings(missing).client_kwargs()
    assert (kwargs["security_protocol"], kwargs["sasl_plain_username"]) == ("SASL_SSL", "ingress")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_credentials_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    creds.write(path, creds.Credentials("x", "one"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):
        creds.write(path, creds.Credentials("x", "two"))
    assert creds.load(path).password == "one"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "name", ["Upper", "-leading", "under_score", "dot.ted", "x" * 64, "", "spa ce"]
)
def test_automation_names_are_checked_before_anything_is_done(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["automation", "add", name, "--tenant", "default"]) == 2
    assert "lowercase letters" in capsys.readouterr().err or name.startswith("-")


def test_automation_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["automation", "add", "ok-name"]) == 2  # --tenant is required
    assert "--tenant" in capsys.readouterr().err
    assert main(["automation"]) == 2
    assert main(["automation", "revoke"]) == 2
    assert main(["automation", "--help"]) == 0
    assert "soma-gateway automation add" in capsys.readouterr().out


# ---- TLS: the broker's certificate is checked against KAFKA_SSL_CAFILE ------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey]
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if subject == issuer[0]:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), False
        )
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _ca(directory: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"{name}.pem"
    path.write_bytes(_pem(_certificate(name, key, (name, key))))
    return path, key


@pytest.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A TLS listener on loopback standing in for the broker (a certificate for
    `localhost` signed by a CA of its own): its address and the CA file."""
    ca_file, ca_key = _ca(tmp_path, "broker-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_file = tmp_path / "broker.pem", tmp_path / "broker.key"
    chain.write_bytes(_pem(_certificate("localhost", key, ("broker-ca", ca_key))))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key_file)

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"localhost:{port}", ca_file
    finally:
        server.close()
        await server.wait_closed()


async def _handshake(kafka: KafkaConnection) -> None:
    host, _, port = kafka.bootstrap_servers.rpartition(":")
    context = kafka.client_kwargs()["ssl_context"]
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    writer.close()


async def test_tls_trusts_the_configured_ca_and_no_other(
    tls_broker: tuple[str, Path], tmp_path: Path
) -> None:
    address, ca_file = tls_broker
    _write(tmp_path, "ingress", "s3cret")
    settings = CommonSettings(  # on loopback, so in the local profile
        kafka_bootstrap_servers=address,
        kafka_security_protocol="SASL_SSL",
        service_name="ingress",
        kafka_credentials_dir=tmp_path,
        kafka_ssl_cafile=ca_file,
    )
    kafka = KafkaConnection.from_settings(settings)
    assert kafka.ssl_cafile == ca_file
    await _handshake(kafka)  # the broker's certificate verifies against the CA file
    # confluent-kafka's admin client (SCRAM users, ACLs) checks it against the same file.
    assert kafka.librdkafka_config()["ssl.ca.location"] == str(ca_file)
    other, _ = _ca(tmp_path, "someone-else")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(KafkaConnection(address, "SASL_SSL", ssl_cafile=other))
    # Without a CA file: the system's trust store, which does not know this CA either.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(KafkaConnection(address, "SASL_SSL"))
