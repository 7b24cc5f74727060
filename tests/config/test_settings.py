"""``Settings.from_env``: the documented defaults, every variable parsed, every problem at once."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from licensing_server.config import ConfigError, Settings


def test_no_variables_give_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    # The same as the dataclass's, with the launcher decided (no enclave command: fork-server).
    assert settings == dataclasses.replace(Settings(), enclave_launcher="fork-server")
    assert (settings.data_dir, settings.database_url) == (Path(".licensing"), "")
    assert (settings.frontend_enroll_addr, settings.frontend_api_addr, settings.backend_addr) == (
        "127.0.0.1:8443",
        "127.0.0.1:9443",
        "127.0.0.1:8444",
    )
    assert settings.server_names == ("localhost", "127.0.0.1")
    assert (settings.bcrypt_cost, settings.bcrypt_threads) == (
        12,
        max(1, len(os.sched_getaffinity(0))),
    )
    assert (settings.access_token_ttl_seconds, settings.refresh_token_ttl_seconds) == (
        600,
        7 * 24 * 3600,
    )
    assert (settings.max_enclaves, settings.enclave_ttl_seconds) == (3, 3600)
    assert (settings.enclave_command, settings.enclave_launcher, settings.enclave_ports) == (
        (),
        "fork-server",
        None,
    )
    assert (settings.tpm_tcti, settings.swtpm_port) == ("", 2321)
    assert (settings.token_issuer, settings.token_audience, settings.log_level) == (
        "licensing",
        "licensing",
        "INFO",
    )


def test_the_effective_values_derive_from_the_data_directory() -> None:
    settings = Settings.from_env({"LICENSING_DATA_DIR": "/srv/licensing"})
    assert settings.effective_database_url == "sqlite+aiosqlite:////srv/licensing/licensing.db"
    assert settings.effective_tpm_tcti == "swtpm:host=127.0.0.1,port=2321"
    assert settings.swtpm_state_dir == Path("/srv/licensing/tpm")
    assert settings.effective_manufacturer_ca_file == Path("/srv/licensing/tpm/manufacturer-ca.pem")
    assert settings.effective_token_keys_dir == Path("/srv/licensing/frontend")
    chosen = Settings.from_env(
        {
            "LICENSING_TOKEN_KEYS_DIR": "/run/licensing/token-signing",
            "LICENSING_DATABASE_URL": "postgresql://u:p@db/licensing",
            "LICENSING_TPM_TCTI": "device:/dev/tpmrm0",
            "LICENSING_TPM_MANUFACTURER_CA_FILE": "/etc/tpm-ca.pem",
        }
    )
    assert chosen.effective_database_url == "postgresql+psycopg://u:p@db/licensing"
    assert chosen.effective_tpm_tcti == "device:/dev/tpmrm0"
    assert chosen.effective_manufacturer_ca_file == Path("/etc/tpm-ca.pem")
    assert chosen.effective_token_keys_dir == Path("/run/licensing/token-signing")


#: (variable, value, attribute, parsed): one row per LICENSING_* variable.
_PARSED: list[tuple[str, str, str, object]] = [
    ("DATA_DIR", "/var/lib/licensing", "data_dir", Path("/var/lib/licensing")),
    ("DATABASE_URL", "sqlite:///x.db", "database_url", "sqlite+aiosqlite:///x.db"),
    ("FRONTEND_ENROLL_ADDR", "0.0.0.0:443", "frontend_enroll_addr", "0.0.0.0:443"),
    ("FRONTEND_API_ADDR", "[::]:9443", "frontend_api_addr", "[::]:9443"),
    ("BACKEND_ADDR", "backend.internal:8444", "backend_addr", "backend.internal:8444"),
    ("SERVER_NAMES", " a.example , ,10.0.0.1 ", "server_names", ("a.example", "10.0.0.1")),
    ("BCRYPT_COST", "4", "bcrypt_cost", 4),
    ("BCRYPT_THREADS", "3", "bcrypt_threads", 3),
    ("LOGIN_QUEUE_LIMIT", "10000", "login_queue_limit", 10_000),
    ("LOGIN_FAILURES_PER_MINUTE", "0", "login_failures_per_minute", 0),
    ("RATE_LIMIT_PERCENT", "250", "rate_limit_percent", 250),
    ("HANDSHAKE_TIMEOUT_SECONDS", "300", "handshake_timeout_seconds", 300),
    ("CONNECTION_IDLE_SECONDS", "1", "connection_idle_seconds", 1),
    ("MAX_CONNECTIONS", "5", "max_connections", 5),
    ("MAX_STREAMS_PER_CONNECTION", "7", "max_streams_per_connection", 7),
    ("MAX_CALLS_PER_ADDRESS", "0", "max_calls_per_address", 0),
    ("MALLOC_TRIM_SECONDS", "0", "malloc_trim_seconds", 0),
    ("ACCESS_TOKEN_TTL_SECONDS", "30", "access_token_ttl_seconds", 30),
    (
        "TOKEN_KEYS_DIR",
        "/run/licensing/token-signing",
        "token_keys_dir",
        Path("/run/licensing/token-signing"),
    ),
    ("TOKEN_KEYS_RELOAD_SECONDS", "2", "token_keys_reload_seconds", 2),
    ("REFRESH_TOKEN_TTL_SECONDS", "7776000", "refresh_token_ttl_seconds", 90 * 86400),
    ("CLIENT_CERTIFICATE_TTL_SECONDS", "60", "client_certificate_ttl_seconds", 60),
    ("TOKEN_ISSUER", "https://licensing.example", "token_issuer", "https://licensing.example"),
    ("TOKEN_AUDIENCE", "enclaves", "token_audience", "enclaves"),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("LOG_FORMAT", "JSON", "log_format", "json"),
    ("FRONTEND_METRICS_ADDR", "0.0.0.0:9100", "frontend_metrics_addr", "0.0.0.0:9100"),
    ("FRONTEND_METRICS_ADDR", "off", "frontend_metrics_addr", ""),
    ("BACKEND_METRICS_ADDR", "[::1]:9101", "backend_metrics_addr", "[::1]:9101"),
    ("BACKEND_METRICS_ADDR", " OFF ", "backend_metrics_addr", ""),
    ("MAX_ENCLAVES", "0", "max_enclaves", 0),
    ("ENCLAVE_TTL_SECONDS", "10", "enclave_ttl_seconds", 10),
    (
        "ENCLAVE_COMMAND",
        "my-enclave --flag 'a b'",
        "enclave_command",
        ("my-enclave", "--flag", "a b"),
    ),
    ("ENCLAVE_LAUNCHER", " EXEC ", "enclave_launcher", "exec"),
    ("ENCLAVE_RUNTIME", "local", "enclave_runtime", "local"),
    ("CERTIFICATE_ISSUER", "builtin", "certificate_issuer", "builtin"),
    ("ENCLAVE_PORTS", "9000-9010", "enclave_ports", (9000, 9010)),
    ("REAP_INTERVAL_SECONDS", "3600", "reap_interval_seconds", 3600),
    ("RECONCILE_INTERVAL_SECONDS", "2", "reconcile_interval_seconds", 2),
    ("ABANDONED_AFTER_SECONDS", "86400", "abandoned_after_seconds", 86400),
    ("TPM_TCTI", "device:/dev/tpmrm0", "tpm_tcti", "device:/dev/tpmrm0"),
    ("TPM_MANUFACTURER_CA_FILE", "/etc/ca.pem", "tpm_manufacturer_ca_file", "/etc/ca.pem"),
    ("SWTPM_PORT", "65534", "swtpm_port", 65534),
    ("TPM_COMMAND_TIMEOUT_SECONDS", "600", "tpm_command_timeout_seconds", 600),
    ("TPM_SIMULATED_LATENCY_MS", "25", "tpm_simulated_latency_ms", 25),
    ("LEADER_ELECTION", " SOLE ", "leader_election", "sole"),
    ("LEADER_LEASE_SECONDS", "2", "leader_lease_seconds", 2),
    ("LEADER_RETRY_SECONDS", "60", "leader_retry_seconds", 60),
    ("BACKEND_ID", " backend-7 ", "backend_id", "backend-7"),
    ("BACKEND_HEARTBEAT_SECONDS", "2", "backend_heartbeat_seconds", 2),
    ("BACKEND_STALE_AFTER_SECONDS", "10", "backend_stale_after_seconds", 10),
    ("BACKEND_QUOTE_ADDR", "0.0.0.0:8445", "backend_quote_addr", "0.0.0.0:8445"),
    (
        "BACKEND_QUOTE_ADVERTISE_ADDR",
        " 10.0.0.7:8445 ",
        "backend_quote_advertise_addr",
        "10.0.0.7:8445",
    ),
    # Continuous attestation (issue 13).
    ("REATTEST_INTERVAL_SECONDS", "2", "reattest_interval_seconds", 2),
    ("REATTEST_GRACE_SECONDS", "0", "reattest_grace_seconds", 0),
]


@pytest.mark.parametrize(
    ("name", "value", "attribute", "parsed"), _PARSED, ids=[r[0] for r in _PARSED]
)
def test_each_variable_is_parsed(name: str, value: str, attribute: str, parsed: object) -> None:
    settings = Settings.from_env({f"LICENSING_{name}": value})
    assert getattr(settings, attribute) == parsed
    # ...and only that one changes.
    defaults = Settings.from_env({})
    others = {f: getattr(defaults, f) for f in Settings.__dataclass_fields__ if f != attribute}
    if name == "ENCLAVE_COMMAND":  # a custom enclave means a fresh process per enclave
        others["enclave_launcher"] = "exec"
    assert {f: getattr(settings, f) for f in others} == others


def test_every_settings_field_has_a_variable() -> None:
    assert {row[2] for row in _PARSED} | {"kubernetes"} == set(Settings.__dataclass_fields__)


_KUBERNETES: list[tuple[str, str, str, object]] = [
    ("KUBERNETES_KUBECONFIG", "/k/config", "kubeconfig", "/k/config"),
    ("KUBERNETES_NAMESPACE", "enclaves", "namespace", "enclaves"),
    ("KUBERNETES_ENCLAVE_IMAGE", "reg/enclave:1", "enclave_image", "reg/enclave:1"),
    ("KUBERNETES_ENCLAVE_SERVICE_ACCOUNT", "sa", "enclave_service_account", "sa"),
    ("KUBERNETES_ENCLAVE_PORT", "9443", "enclave_port", 9443),
    ("KUBERNETES_ENCLAVE_CPU_REQUEST", "10m", "enclave_cpu_request", "10m"),
    ("KUBERNETES_ENCLAVE_CPU_LIMIT", "1", "enclave_cpu_limit", "1"),
    ("KUBERNETES_ENCLAVE_MEMORY_REQUEST", "32Mi", "enclave_memory_request", "32Mi"),
    ("KUBERNETES_ENCLAVE_MEMORY_LIMIT", "1Gi", "enclave_memory_limit", "1Gi"),
    ("KUBERNETES_TOKEN_AUDIENCE", "aud", "token_audience", "aud"),
    ("KUBERNETES_ENROLLMENT_ADDR", "0.0.0.0:8445", "enrollment_addr", "0.0.0.0:8445"),
    ("KUBERNETES_ENROLLMENT_URL", "b.licensing.svc:8445", "enrollment_url", "b.licensing.svc:8445"),
    ("KUBERNETES_INGRESS_DOMAIN", "e.example.com", "ingress_domain", "e.example.com"),
    ("KUBERNETES_INGRESS_CLASS", "nginx", "ingress_class", "nginx"),
    ("KUBERNETES_CERT_MANAGER_ISSUER", "ca", "cert_manager_issuer", "ca"),
    ("KUBERNETES_CERT_MANAGER_ISSUER_KIND", "Issuer", "cert_manager_issuer_kind", "Issuer"),
    ("KUBERNETES_API_WORKERS", "3", "api_workers", 3),
    ("KUBERNETES_LEASE_NAMESPACE", "licensing-2", "lease_namespace", "licensing-2"),
    ("KUBERNETES_LEASE_NAME", "leader", "lease_name", "leader"),
]


def test_every_kubernetes_setting_has_a_variable() -> None:
    fields = set(Settings().kubernetes.__dataclass_fields__)
    assert {row[2] for row in _KUBERNETES} == fields
    for name, value, attribute, parsed in _KUBERNETES:
        settings = Settings.from_env({f"LICENSING_{name}": value})
        assert getattr(settings.kubernetes, attribute) == parsed, name


def test_the_database_chooses_the_leader_election_unless_told() -> None:
    postgres = "postgresql://u:p@db/licensing"
    assert Settings.from_env({}).effective_leader_election == "sole"
    chosen = Settings.from_env({"LICENSING_DATABASE_URL": postgres})
    assert chosen.effective_leader_election == "advisory-lock"
    lease = Settings.from_env(
        {"LICENSING_DATABASE_URL": postgres, "LICENSING_LEADER_ELECTION": "kubernetes-lease"}
    )
    assert lease.effective_leader_election == "kubernetes-lease"
    assert Settings.from_env({"LICENSING_LEADER_ELECTION": "sole"}).effective_leader_election == (
        "sole"
    )


def test_sqlite_has_one_backend_so_no_election_to_choose() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LICENSING_LEADER_ELECTION": "advisory-lock"})
    assert raised.value.problems == [
        "LICENSING_LEADER_ELECTION=advisory-lock needs PostgreSQL: "
        "with embedded SQLite there is one backend, always the leader"
    ]
    with pytest.raises(ConfigError) as unknown:
        Settings.from_env({"LICENSING_LEADER_ELECTION": "raft"})
    assert unknown.value.problems == [
        "LICENSING_LEADER_ELECTION='raft' is not a known leader election; "
        "valid: 'advisory-lock', 'kubernetes-lease', 'sole'"
    ]


def test_blank_values_mean_the_default() -> None:
    blank = {f"LICENSING_{name}": "  " for name, *_ in _PARSED}
    assert Settings.from_env(blank) == Settings.from_env({})


def test_the_process_environment_is_read_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LICENSING_MAX_ENCLAVES", "9")
    assert Settings.from_env().max_enclaves == 9


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("postgres://u@db/l", "postgresql+psycopg://u@db/l"),
        ("postgresql://u@db/l", "postgresql+psycopg://u@db/l"),
        ("postgresql+psycopg://u@db/l", "postgresql+psycopg://u@db/l"),
        ("sqlite:////abs/l.db", "sqlite+aiosqlite:////abs/l.db"),
        ("sqlite+aiosqlite:///l.db", "sqlite+aiosqlite:///l.db"),
    ],
)
def test_database_urls_get_the_drivers_we_ship(url: str, normalised: str) -> None:
    assert Settings.from_env({"LICENSING_DATABASE_URL": url}).database_url == normalised


@pytest.mark.parametrize(
    ("environ", "launcher"),
    [
        ({}, "fork-server"),
        ({"LICENSING_ENCLAVE_LAUNCHER": "fork-server"}, "fork-server"),
        ({"LICENSING_ENCLAVE_COMMAND": "my-enclave"}, "exec"),
        ({"LICENSING_ENCLAVE_LAUNCHER": "exec"}, "exec"),
    ],
)
def test_the_launcher_follows_the_enclave_command(environ: dict[str, str], launcher: str) -> None:
    assert Settings.from_env(environ).enclave_launcher == launcher


#: One bad value per row, and the words its problem must contain.
_BAD: list[tuple[str, str, str]] = [
    ("BCRYPT_COST", "3", "LICENSING_BCRYPT_COST=3 is outside 4..16"),
    ("BCRYPT_COST", "twelve", "LICENSING_BCRYPT_COST='twelve' is not an integer"),
    ("ACCESS_TOKEN_TTL_SECONDS", "3601", "LICENSING_ACCESS_TOKEN_TTL_SECONDS=3601 is outside"),
    ("SWTPM_PORT", "65535", "LICENSING_SWTPM_PORT=65535 is outside 1..65534"),
    ("REATTEST_INTERVAL_SECONDS", "0", "LICENSING_REATTEST_INTERVAL_SECONDS=0 is outside 1..3600"),
    ("MAX_ENCLAVES", "-1", "LICENSING_MAX_ENCLAVES=-1 is outside"),
    ("BACKEND_ADDR", "localhost", "LICENSING_BACKEND_ADDR='localhost' is not host:port"),
    ("FRONTEND_API_ADDR", ":9443", "LICENSING_FRONTEND_API_ADDR=':9443' is not host:port"),
    ("FRONTEND_ENROLL_ADDR", "h:65536", "LICENSING_FRONTEND_ENROLL_ADDR='h:65536' is not"),
    ("FRONTEND_ENROLL_ADDR", "h:0", "LICENSING_FRONTEND_ENROLL_ADDR='h:0' is not host:port"),
    ("DATABASE_URL", "mysql://db/l", "LICENSING_DATABASE_URL must be a postgresql://"),
    ("ENCLAVE_PORTS", "9000", "LICENSING_ENCLAVE_PORTS='9000' is not LOW-HIGH"),
    ("ENCLAVE_PORTS", "9010-9000", "LICENSING_ENCLAVE_PORTS='9010-9000' is not a valid"),
    ("ENCLAVE_PORTS", "0-10", "LICENSING_ENCLAVE_PORTS='0-10' is not a valid port range"),
    (
        "ENCLAVE_LAUNCHER",
        "thread",
        "LICENSING_ENCLAVE_LAUNCHER='thread' is not a known enclave launcher; valid: 'exec'",
    ),
    (
        "ENCLAVE_RUNTIME",
        "nomad",
        "LICENSING_ENCLAVE_RUNTIME='nomad' is not a known enclave runtime; valid: 'kubernetes', "
        "'local'",
    ),
    (
        "CERTIFICATE_ISSUER",
        "vault",
        "LICENSING_CERTIFICATE_ISSUER='vault' is not a known certificate issuer",
    ),
    ("LOG_LEVEL", "chatty", "LICENSING_LOG_LEVEL='CHATTY' is not a log level"),
    ("LOG_FORMAT", "xml", "LICENSING_LOG_FORMAT='xml' is not text or json"),
    ("FRONTEND_METRICS_ADDR", "9464", "LICENSING_FRONTEND_METRICS_ADDR='9464' is not host:port"),
    ("BACKEND_METRICS_ADDR", "h:99999", "LICENSING_BACKEND_METRICS_ADDR='h:99999' is not"),
]


@pytest.mark.parametrize(("name", "value", "problem"), _BAD, ids=[f"{n}={v}" for n, v, _ in _BAD])
def test_a_bad_value_names_the_variable_and_what_is_wrong(
    name: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({f"LICENSING_{name}": value})
    [reported] = caught.value.problems
    assert reported.startswith(problem)


def test_the_fork_server_cannot_run_a_custom_enclave_command() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"LICENSING_ENCLAVE_LAUNCHER": "fork-server", "LICENSING_ENCLAVE_COMMAND": "mine"}
        )
    [problem] = caught.value.problems
    assert "unset LICENSING_ENCLAVE_COMMAND or use exec" in problem


def test_every_problem_is_reported_in_one_error() -> None:
    """An operator fixes the whole configuration in one go, not one variable per restart."""
    bad = {name: value for name, value, _ in _BAD}  # one bad value per variable (the last)
    assert bad["BCRYPT_COST"] == "twelve"  # not an integer, besides values out of range
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({f"LICENSING_{name}": value for name, value in bad.items()})
    problems = caught.value.problems
    assert len(problems) == len(bad)
    for name in bad:
        assert sum(f"LICENSING_{name}" in p for p in problems) == 1, (name, problems)
    message = str(caught.value)
    assert message.startswith("invalid configuration:\n  - ")
    assert all(problem in message for problem in problems)


def test_a_backends_id_is_the_same_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    first = Settings.from_env({"LICENSING_DATA_DIR": str(tmp_path / "a")})
    again = Settings.from_env({"LICENSING_DATA_DIR": str(tmp_path / "a")})
    other = Settings.from_env({"LICENSING_DATA_DIR": str(tmp_path / "b")})
    assert first.effective_backend_id == again.effective_backend_id
    assert first.effective_backend_id != other.effective_backend_id
    monkeypatch.setenv("POD_NAME", "licensing-backend-0")
    assert first.effective_backend_id == "licensing-backend-0"


def test_the_quote_listener_is_off_by_default_and_advertised_as_bound_unless_a_wildcard() -> None:
    assert Settings.from_env({}).effective_quote_advertise_addr == ""
    off = Settings.from_env({"LICENSING_BACKEND_QUOTE_ADDR": "off"})
    assert off.backend_quote_addr == ""
    bound = Settings.from_env({"LICENSING_BACKEND_QUOTE_ADDR": "127.0.0.1:8445"})
    assert bound.effective_quote_advertise_addr == "127.0.0.1:8445"
    wildcard = Settings.from_env({"LICENSING_BACKEND_QUOTE_ADDR": "0.0.0.0:8445"})
    assert wildcard.effective_quote_advertise_addr == ""
    told = Settings.from_env(
        {
            "LICENSING_BACKEND_QUOTE_ADDR": "0.0.0.0:8445",
            "LICENSING_BACKEND_QUOTE_ADVERTISE_ADDR": "10.0.0.7:8445",
        }
    )
    assert told.effective_quote_advertise_addr == "10.0.0.7:8445"
