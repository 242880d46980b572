"""The control protocol's parsing, the role mapping from OS groups, and the control/metrics config."""

from __future__ import annotations

import json

import pytest

from ingestd.config import Config, ConfigError, ControlConfig, parse_config
from ingestd.control import protocol
from ingestd.control.auth import Caller, roles_for
from ingestd.control.dispatch import redact
from ingestd.control.registry import PermissionDenied
from ingestd.exit_codes import ExitCode
from store.audit import Role


def test_a_well_formed_request_parses() -> None:
    message = protocol.parse_request(b'{"id": 3, "command": "footage", "args": {"device": "ZFY0001"}}\n')
    assert (message.id, message.command, dict(message.args)) == (3, "footage", {"device": "ZFY0001"})
    assert protocol.parse_request(b'{"command": "status"}').args == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"hello", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"command": "status", "extra": 1}', "unknown request field(s): extra"),
        (b'{"command": "Status"}', "lower-case command name"),
        (b'{"command": "a' + b"b" * 80 + b'"}', "lower-case command name"),
        (b'{"id": true, "command": "status"}', "id must be"),
        (b'{"id": [1], "command": "status"}', "id must be"),
        (b'{"command": "status", "args": [1]}', "args must be a JSON object"),
        (b'{"command": "status", "args": {"x": "\\ud800"}}', "unpaired surrogate"),
        (b'{"command": "status", "args": {"\\udfff": 1}}', "unpaired surrogate"),
        (
            b'{"command": "status", "args": {"x": "' + b"y" * protocol.MAX_REQUEST_BYTES + b'"}}',
            "larger than",
        ),
    ],
)
def test_garbage_is_refused_with_a_clear_reason(line: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match="control protocol") as caught:
        protocol.parse_request(line)
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.PROTOCOL


@pytest.mark.parametrize("opener", [b"[", b'{"k":'])
def test_deeply_nested_json_is_a_bad_request_not_a_crash(opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    deep = b'{"id": 9, "command": "status", "args": {"x": ' + opener * 100_000 + closer * 100_000 + b"}}"
    with pytest.raises(protocol.ProtocolError, match="nested deeper than") as caught:
        protocol.parse_request(deep)
    assert caught.value.exit_code == ExitCode.PROTOCOL
    assert protocol.request_id_of(deep) is None  # the error path must not recurse either
    unclosed = b'{"id": 9, "command": "status", "args": {"x": ' + opener * 100_000
    with pytest.raises(protocol.ProtocolError, match="nested deeper than"):
        protocol.parse_request(unclosed)
    assert protocol.request_id_of(unclosed) is None
    with pytest.raises(protocol.ProtocolError, match="not JSON"):  # merely cut short: said so
        protocol.parse_request(b'{"command": "status", "args": {"x": [[')
    # Brackets inside strings are text, not nesting; the limit itself is accepted.
    within = b'{"command": "status", "args": {"x": "' + b"[" * 1000 + b'"}}'
    assert protocol.parse_request(within).args == {"x": "[" * 1000}
    escaped = b'{"command": "status", "args": {"x": "\\"' + b"[" * 40 + b"]" * 40 + b'"}}'
    assert protocol.parse_request(escaped).args == {"x": '"' + "[" * 40 + "]" * 40}
    limit = protocol.MAX_NESTING - 2  # the request object and args are two levels
    assert protocol.parse_request(b'{"command": "s", "args": {"x": ' + b"[" * limit + b"]" * limit + b"}}")


def test_an_id_is_recovered_from_a_bad_request_when_possible() -> None:
    assert protocol.request_id_of(b'{"id": "a1", "command": 5}') == "a1"
    assert protocol.request_id_of(b"junk") is None


def test_responses_round_trip_and_are_checked() -> None:
    line = protocol.encode(protocol.ok("r1", {"n": 1})).rstrip(b"\n")
    assert protocol.parse_response(line, "r1")["result"] == {"n": 1}
    with pytest.raises(protocol.ProtocolError, match="expected 'r2'"):
        protocol.parse_response(line, "r2")
    failed = protocol.encode(protocol.failure("r3", "permission-denied", "no", 13)).rstrip(b"\n")
    assert json.loads(failed)["error"]["exit_code"] == 13
    with pytest.raises(protocol.ProtocolError, match="malformed"):
        protocol.parse_response(b'{"id": "r4", "ok": false, "error": "x"}', "r4")
    # The daemon refusing the connection itself answers before reading a request, so without an id.
    refused = protocol.encode(protocol.failure(None, "too-many-connections", "uid 7 ...", 75)).rstrip(b"\n")
    assert protocol.parse_response(refused, "r5")["error"]["exit_code"] == 75
    with pytest.raises(protocol.ProtocolError, match="expected 'r6'"):
        protocol.parse_response(b'{"id": null, "ok": true, "result": 1}', "r6")


def test_error_codes_come_from_class_names() -> None:
    assert protocol.error_code(PermissionDenied(detail="x")) == "permission-denied"
    assert protocol.error_code(protocol.ProtocolError(detail="x")) == "protocol"


def test_secrets_never_reach_the_audit_details() -> None:
    assert redact({"password": "123456", "api_token": "t", "device": "ZFY0001"}) == {
        "password": "***",
        "api_token": "***",
        "device": "ZFY0001",
    }
    huge = redact({"ids": list(range(5000))})
    assert huge["truncated"] is True
    assert huge["key_count"] == 1


CONFIG = ControlConfig(
    admin_group="adm",
    clerk_group="clk",
    approver_group="apr",
    auditor_group="aud",
    viewer_group="",
)


def test_groups_map_to_roles_and_root_is_admin() -> None:
    assert roles_for(1000, ["users", "clk", "aud"], CONFIG) == {Role.CLERK, Role.AUDITOR}
    assert roles_for(1000, ["users"], CONFIG) == frozenset()
    assert roles_for(0, [], CONFIG) == {Role.ADMIN}
    # An empty group name in the config gives that role to nobody, not to a group named "".
    assert roles_for(1000, [""], CONFIG) == frozenset()


def test_the_audited_role_is_the_best_one_that_allows_the_command() -> None:
    roles = frozenset({Role.CLERK, Role.AUDITOR})
    caller = Caller(user="li", uid=1001, pid=42, groups=frozenset(), roles=roles)
    assert caller.actor(frozenset({Role.CLERK, Role.ADMIN})).role is Role.CLERK
    assert caller.actor().role is Role.AUDITOR
    assert caller.actor().source == "ctl:uid=1001 pid=42"
    nobody = Caller(user="x", uid=1002, pid=43, groups=frozenset(), roles=frozenset())
    assert str(nobody.actor().role) == "none"


def test_metrics_listen_only_on_loopback() -> None:
    assert Config().metrics.enabled is False
    assert parse_config({"metrics": {"listen": "[::1]:9464"}}, "t").metrics.address() == ("::1", 9464)
    for bad, reason in [
        ("0.0.0.0:9464", "not a loopback address"),
        ("10.1.2.3:9464", "not a loopback address"),
        ("localhost:9464", "not an IP address"),
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:99999", "host:port"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            parse_config({"metrics": {"listen": bad}}, "t")


def test_a_socket_path_too_long_for_sockaddr_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"control\.socket: .*longer than"):
        parse_config({"control": {"socket": "/run/" + "x" * 120}}, "t")


def test_the_per_uid_connection_cap_cannot_exceed_the_total() -> None:
    assert Config().control.max_connections_per_uid < Config().control.max_connections
    with pytest.raises(ConfigError, match="max_connections_per_uid cannot exceed max_connections"):
        parse_config({"control": {"max_connections": 2, "max_connections_per_uid": 3}}, "t")
