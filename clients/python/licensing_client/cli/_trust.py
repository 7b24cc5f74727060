"""Which licensing CA to trust: pinned from --ca-file, or on first use, and said which.

After the pin exists every connection to the licensing server verifies against it;
the pin only changes when the user passes --ca-file again (or a Login over a
verified connection returns the CA bundle).
"""

from __future__ import annotations

from pathlib import Path

from licensing_client import enrollment_channel, unverified_channel
from licensing_client._keys import fingerprint, load_certificates, subject_of
from licensing_client.cli._errors import CliError, UsageError, explain
from licensing_client.cli._output import Output
from licensing_client.cli._store import CredentialStore
from licensing_client.gen.licensing import v1

CALL_TIMEOUT = 30.0


def _read_ca_file(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --ca-file {path}: {exc.strerror}") from exc
    try:
        load_certificates(pem)
    except ValueError as exc:
        raise UsageError(f"--ca-file {path} holds no PEM certificate") from exc
    return pem


def describe_ca(pem: bytes) -> str:
    """``subject, SHA-256 fingerprint XX:..`` of the current (first) CA certificate."""
    first = load_certificates(pem)[0]
    return f"{subject_of(first)}, SHA-256 fingerprint {fingerprint(first)}"


async def _fetch_bundle(address: str, *, ca_file: Path | None) -> v1.GetTrustBundleResponse:
    channel = (
        enrollment_channel(address, ca_file=ca_file)
        if ca_file is not None
        else unverified_channel(address)
    )
    try:
        return await v1.TrustServiceStub(channel).get_trust_bundle(
            v1.GetTrustBundleRequest(), timeout=CALL_TIMEOUT
        )
    finally:
        channel.close()


async def ensure_trust(
    store: CredentialStore, output: Output, *, server: str, ca_file: Path | None
) -> Path:
    """The path of the pinned CA, pinning it first if needed; says what happened on stderr."""
    if ca_file is not None:
        pem = _read_ca_file(ca_file)
        if store.pinned_ca() != pem:
            store.pin_ca(pem)
            output.notice(
                f"trust: pinned the CA from --ca-file {ca_file} into {store.ca_path} "
                f"({describe_ca(pem)})"
            )
        else:
            output.notice(f"trust: using the CA from --ca-file {ca_file} ({describe_ca(pem)})")
        return store.ca_path
    if store.pinned_ca() is not None:
        return store.ca_path

    with explain(
        "fetching the trust bundle for trust on first use",
        peer=f"the licensing server at {server}",
    ):
        bundle = await _fetch_bundle(server, ca_file=None)
    pem = "".join(
        text if text.endswith("\n") else text + "\n" for text in bundle.ca_certificates_pem
    ).encode()
    try:
        load_certificates(pem)
    except ValueError as exc:
        raise CliError(f"the licensing server at {server} sent no CA certificate to pin") from exc
    store.pin_ca(pem)
    # Prove the server's own certificate chains to what it sent before keeping it.
    with explain(
        "checking the CA received on first use",
        peer=f"the licensing server at {server}",
        trust="the server's certificate is not signed by the CA it published, so it was not pinned",
    ):
        try:
            await _fetch_bundle(server, ca_file=store.ca_path)
        except BaseException:
            store.ca_path.unlink(missing_ok=True)
            raise
    output.notice(
        f"trust: no CA was pinned, so the CA that the server at {server} publishes "
        f"(TrustService, fetched unverified) was pinned on first use (TOFU) into "
        f"{store.ca_path}:\n"
        f"  {describe_ca(pem)}\n"
        "  compare this fingerprint out of band (e.g. `openssl x509 -noout -fingerprint "
        "-sha256 -in ca.pem` where the server runs) or pin it yourself with --ca-file; "
        "from now on the server is verified against this CA"
    )
    return store.ca_path
