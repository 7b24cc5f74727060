"""The whole story with grpcurl and openssl only, as the README prints it."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from tests.grpcurl import run_grpcurl
from tests.support import PASSWORD, Stack


def test_signup_login_with_openssl_csr_then_get_current_user(
    stack: Stack, grpcurl: str, tmp_path: Path
) -> None:
    ca = str(stack.ca_path)
    name = f"Story-{uuid.uuid4().hex[:8]}"

    signed_up = run_grpcurl(
        grpcurl,
        "-cacert",
        ca,
        stack.enroll_addr,
        "licensing.v1.AuthService/SignUp",
        data=json.dumps({"username": name, "password": PASSWORD}),
    )
    assert signed_up.returncode == 0, signed_up.stderr
    assert signed_up.json()["username"] == name.lower()

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
            str(tmp_path / "me.key"),
            "-subj",
            "/CN=whatever-i-like",
            "-out",
            str(tmp_path / "me.csr"),
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
        data=json.dumps(
            {"username": name, "password": PASSWORD, "csr_pem": (tmp_path / "me.csr").read_text()}
        ),
    )
    assert logged_in.returncode == 0, logged_in.stderr
    login = logged_in.json()
    (tmp_path / "me.pem").write_text(login["client_certificate_pem"])

    # The server chose the subject, not the CSR.
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "me.pem"), "-noout", "-subject"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert name.lower() in subject
    assert "whatever-i-like" not in subject

    me = run_grpcurl(
        grpcurl,
        "-cacert",
        ca,
        "-cert",
        str(tmp_path / "me.pem"),
        "-key",
        str(tmp_path / "me.key"),
        "-H",
        f"authorization: Bearer {login['access_token']}",
        stack.api_addr,
        "licensing.v1.AuthService/GetCurrentUser",
    )
    assert me.returncode == 0, me.stderr
    assert me.json()["user"]["username"] == name.lower()
    assert me.json()["user"]["id"] == signed_up.json()["user_id"]
