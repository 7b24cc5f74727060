"""The whole enclave story: sign up, log in, create, use, delete; with grpcurl and with stubs."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from enclave.v1 import workload_pb2
from google.protobuf import json_format
from licensing.v1 import attestation_pb2, enclave_pb2

from licensing_client.attestation import verify_attestation
from tests.enclaves.helpers import (
    CARRIES_ATTESTATION,
    CARRIES_ENCLAVE,
    PROVISIONING_PHASE_NAMES,
    Owner,
    assert_no_leftovers,
    code_and_reason,
    enclave_work_dir,
    json_stream,
    new_nonce,
    new_request_id,
    phase_names,
    processes_mentioning,
    refusal,
)
from tests.grpcurl import GrpcurlResult, run_grpcurl
from tests.support import PASSWORD, LoggedIn, Stack

ENCLAVE_SERVICE = "licensing.v1.EnclaveService"
WORKLOAD_SERVICE = "enclave.v1.WorkloadService"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _verify_signature(certificate_pem: str, signature: bytes, data: bytes) -> None:
    """ECDSA P-256 / SHA-256 with the key the enclave certificate certifies (raises if not)."""
    public_key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _check_certificate(stack: Stack, enclave_id: str, certificate_pem: str, name: str) -> bytes:
    """Issued by the licensing CA for the enclave's name; returns its SHA-256."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    ca = x509.load_pem_x509_certificate(stack.ca_pem)
    certificate.verify_directly_issued_by(ca)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert name in san.get_values_for_type(x509.DNSName)
    assert enclave_id in name
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _assert_gone(stack: Stack, enclave_id: str) -> None:
    assert processes_mentioning(enclave_id) == [], "the enclave process outlived DeleteEnclave"
    assert not enclave_work_dir(stack, enclave_id).exists()
    assert_no_leftovers(stack, [enclave_id])


# grpcurl -------------------------------------------------------------------------------


def test_enclave_story_with_grpcurl(
    stack: Stack, grpcurl: str, tmp_path: Path, new_owner: Callable[..., Owner]
) -> None:
    ca = str(stack.ca_path)
    name = f"enclave-story-{uuid.uuid4().hex[:8]}"
    signed_up = run_grpcurl(
        grpcurl,
        "-cacert",
        ca,
        stack.enroll_addr,
        "licensing.v1.AuthService/SignUp",
        data=json.dumps({"username": name, "password": PASSWORD}),
    )
    assert signed_up.returncode == 0, signed_up.stderr
    user_id = signed_up.json()["user_id"]

    key, csr, cert = tmp_path / "me.key", tmp_path / "me.csr", tmp_path / "me.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            f"/CN={name}",
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
    )
    logged_in = run_grpcurl(
        grpcurl,
        "-cacert",
        ca,
        stack.enroll_addr,
        "licensing.v1.AuthService/Login",
        data=json.dumps({"username": name, "password": PASSWORD, "csr_pem": csr.read_text()}),
    )
    assert logged_in.returncode == 0, logged_in.stderr
    login = logged_in.json()
    cert.write_text(login["client_certificate_pem"])
    # Only so that a failing test still deletes what it created.
    new_owner(
        LoggedIn(
            user_id,
            name,
            key.read_bytes(),
            cert.read_bytes(),
            login["access_token"],
            login["refresh_token"],
        )
    )
    user_args = (
        "-cacert",
        ca,
        "-cert",
        str(cert),
        "-key",
        str(key),
        "-H",
        f"authorization: Bearer {login['access_token']}",
    )

    def api(method: str, body: object) -> GrpcurlResult:
        return run_grpcurl(
            grpcurl,
            *user_args,
            stack.api_addr,
            f"{ENCLAVE_SERVICE}/{method}",
            data=json.dumps(body),
        )

    # CreateEnclave streams every phase, in order, numbered from 1, up to ATTESTED.
    request_id = new_request_id()
    nonce = new_nonce()
    created = api("CreateEnclave", {"request_id": request_id, "nonce": _b64(nonce)})
    assert created.returncode == 0, created.stderr
    events = json_stream(created.stdout)
    assert [e["phase"] for e in events] == PROVISIONING_PHASE_NAMES
    assert [int(e["sequence"]) for e in events] == [1, 2, 3, 4, 5, 6, 7]
    enclave_id = events[0]["enclave_id"]
    assert all(e["enclave_id"] == enclave_id for e in events)
    assert all(e["message"] and e["time"] for e in events)
    assert ["enclave" in e for e in events] == CARRIES_ENCLAVE
    assert ["attestation" in e for e in events] == CARRIES_ATTESTATION
    enclave = events[-1]["enclave"]
    assert enclave["id"] == enclave_id
    assert enclave["owner"] == user_id
    assert enclave["phase"] == "PHASE_ATTESTED"
    assert enclave["request_id"] == request_id
    assert enclave["endpoint"].startswith("127.0.0.1:")
    assert enclave["tls_server_name"]
    certificate_sha256 = _check_certificate(
        stack, enclave_id, enclave["certificate_pem"], enclave["tls_server_name"]
    )
    ready = events[4]["enclave"]
    assert (ready["id"], ready["endpoint"]) == (enclave_id, enclave["endpoint"])
    assert ready["certificate_pem"] == enclave["certificate_pem"]
    # The TPM quote binds our nonce to that certificate.
    attestation = json_format.ParseDict(events[-1]["attestation"], attestation_pb2.Attestation())
    verify_attestation(
        attestation,
        nonce=nonce,
        expected_certificate_pem=enclave["certificate_pem"],
        trusted_ca_pem=[stack.ca_pem.decode()],
    )

    got = api("GetEnclave", {"enclave_id": enclave_id})
    assert got.returncode == 0, got.stderr
    assert got.json()["enclave"]["phase"] == "PHASE_ATTESTED"
    assert got.json()["enclave"]["certificate_pem"] == enclave["certificate_pem"]
    listed = api("ListEnclaves", {})
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in listed.json()["enclaves"]] == [enclave_id]

    # The enclave itself, over mutual TLS, verifying its certificate by tls_server_name.
    def workload(method: str, body: object) -> GrpcurlResult:
        result = run_grpcurl(
            grpcurl,
            *user_args,
            "-servername",
            enclave["tls_server_name"],
            enclave["endpoint"],
            f"{WORKLOAD_SERVICE}/{method}",
            data=json.dumps(body),
        )
        assert result.returncode == 0, result.stderr
        return result

    secret = b"\x00hunter2\xff"
    workload("PutSecret", {"name": "db-password", "value": _b64(secret)})
    assert base64.b64decode(workload("GetSecret", {"name": "db-password"}).json()["value"]) == (
        secret
    )
    assert workload("ListSecrets", {}).json()["names"] == ["db-password"]

    data = b"sign me, enclave"
    signed = workload("Sign", {"data": _b64(data)}).json()
    assert signed["certificate_pem"] == enclave["certificate_pem"]
    _verify_signature(enclave["certificate_pem"], base64.b64decode(signed["signature"]), data)

    identity = workload("GetIdentity", {}).json()
    assert identity["enclave_id"] == enclave_id
    assert identity["owner"] == user_id
    assert base64.b64decode(identity["certificate_sha256"]) == certificate_sha256
    assert identity["certificate_pem"] == enclave["certificate_pem"]

    # Delete: the process, its directory and every record go.
    assert processes_mentioning(enclave_id), "the enclave should run as a process"
    assert enclave_work_dir(stack, enclave_id).is_dir()
    deleted = api("DeleteEnclave", {"enclave_id": enclave_id})
    assert deleted.returncode == 0, deleted.stderr
    _assert_gone(stack, enclave_id)
    missing = api("GetEnclave", {"enclave_id": enclave_id})
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stderr
    assert "ENCLAVE_NOT_FOUND" in missing.stderr
    listed = api("ListEnclaves", {})
    assert listed.returncode == 0, listed.stderr
    assert listed.json().get("enclaves", []) == []
    # The enclave no longer answers.
    dead = run_grpcurl(
        grpcurl,
        *user_args,
        "-servername",
        enclave["tls_server_name"],
        "-connect-timeout",
        "3",
        enclave["endpoint"],
        f"{WORKLOAD_SERVICE}/ListSecrets",
        data="{}",
    )
    assert dead.returncode != 0


# Python stubs ----------------------------------------------------------------------------


def test_enclave_story_with_python_stubs(stack: Stack, new_owner: Callable[..., Owner]) -> None:
    owner = new_owner()
    request_id, nonce = new_request_id(), new_nonce()
    events = owner.create(request_id, nonce)
    assert phase_names(events) == PROVISIONING_PHASE_NAMES
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
    enclave_id = events[0].enclave_id
    assert {e.enclave_id for e in events} == {enclave_id}
    assert [e.HasField("enclave") for e in events] == CARRIES_ENCLAVE
    assert [e.HasField("attestation") for e in events] == CARRIES_ATTESTATION
    enclave = events[-1].enclave
    assert enclave.id == enclave_id
    assert enclave.owner == owner.user.user_id
    assert enclave.phase == enclave_pb2.PHASE_ATTESTED
    assert enclave.request_id == request_id
    assert enclave.endpoint.startswith("127.0.0.1:")
    assert enclave.expire_time.ToDatetime() > enclave.create_time.ToDatetime()
    certificate_sha256 = _check_certificate(
        stack, enclave_id, enclave.certificate_pem, enclave.tls_server_name
    )
    ready = events[4].enclave
    assert (ready.id, ready.endpoint) == (enclave_id, enclave.endpoint)
    assert ready.certificate_pem == enclave.certificate_pem
    # The TPM quote binds our nonce to that certificate.
    owner.verify(enclave, events[-1].attestation, nonce)
    assert owner.get(enclave_id) == enclave
    assert [e.id for e in owner.list_all()] == [enclave_id]

    workload = owner.workload(enclave)
    metadata = owner.bearer
    workload.PutSecret(
        workload_pb2.PutSecretRequest(name="api-key", value=b"s3cr3t"), metadata=metadata
    )
    workload.PutSecret(workload_pb2.PutSecretRequest(name="b", value=b""), metadata=metadata)
    assert (
        workload.GetSecret(workload_pb2.GetSecretRequest(name="api-key"), metadata=metadata).value
        == b"s3cr3t"
    )
    names = workload.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=metadata).names
    assert sorted(names) == ["api-key", "b"]

    data = bytes(range(256)) * 4
    signed = workload.Sign(workload_pb2.SignRequest(data=data), metadata=metadata)
    assert signed.certificate_pem == enclave.certificate_pem
    _verify_signature(enclave.certificate_pem, signed.signature, data)

    identity = workload.GetIdentity(workload_pb2.GetIdentityRequest(), metadata=metadata)
    assert identity.enclave_id == enclave_id
    assert identity.owner == owner.user.user_id
    assert identity.certificate_sha256 == certificate_sha256
    assert identity.certificate_pem == enclave.certificate_pem

    # Without the token the enclave refuses, even with the owner's certificate.
    error = refusal(lambda: workload.ListSecrets(workload_pb2.ListSecretsRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    assert processes_mentioning(enclave_id)
    owner.delete(enclave_id)
    _assert_gone(stack, enclave_id)
    assert code_and_reason(refusal(lambda: owner.get(enclave_id))) == (
        grpc.StatusCode.NOT_FOUND,
        "ENCLAVE_NOT_FOUND",
    )
    assert owner.list_all() == []
    # Deleting again is NOT_FOUND too: there is nothing left to delete.
    assert code_and_reason(refusal(lambda: owner.delete(enclave_id))) == (
        grpc.StatusCode.NOT_FOUND,
        "ENCLAVE_NOT_FOUND",
    )
