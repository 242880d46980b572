"""The config schema: defaults, the example file, and clear refusals naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingestd.config import (
    CameraRuleConfig,
    Config,
    ConfigError,
    VaultSecretError,
    check_for_run,
    load_config,
    read_password_file,
    read_secret_file,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_system_paths() -> None:
    config = Config()
    assert config.catalog.url == "sqlite:////var/lib/ingestd/catalog.db"
    assert config.store.root == Path("/var/lib/ingestd/store")
    assert config.store.read_back is True


def test_example_config_loads_and_sets_every_section() -> None:
    config = load_config(REPO / "config.example.toml")
    assert config.audit.checkpoint_every == 1000
    assert [rule.driver for rule in config.camera] == ["serial", "mass-storage"]
    assert config.camera[0].password_file == Path("/etc/ingestd/camera-password")
    assert config.camera[0].password == ""  # not in the file every ingestctl user reads
    assert config.camera[0].match["ID_MODEL_ID"] == "01*"


def test_example_config_documents_every_schema_key() -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    for section_name, section in Config.model_fields.items():
        annotation = section.annotation
        fields = getattr(annotation, "model_fields", None)
        if fields is None:  # the [[camera]] array: its item model
            fields = CameraRuleConfig.model_fields
        for key in fields:
            assert f"\n{key} =" in text, f"{section_name}.{key} is not documented in config.example.toml"


def test_unknown_key_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nroot = '/srv/store'\nreadback = false\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "store.readback: unknown key" in str(caught.value)
    assert caught.value.exit_code == 78


def test_wrong_type_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nread_back = 'sometimes'\n")
    with pytest.raises(ConfigError, match=r"store\.read_back: .*boolean"):
        load_config(path)


def test_impossible_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nchunk_mib = 0\n")
    with pytest.raises(ConfigError, match=r"store\.chunk_mib: .*greater than or equal to 1"):
        load_config(path)


def test_camera_rule_errors_name_the_rule_index(tmp_path: Path) -> None:
    path = write(tmp_path, "[[camera]]\nmatch = {}\ndriver = 'serial'\npassword = '1234567'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "camera[0].match" in message
    assert "camera[0].password" in message


def test_unsupported_catalog_backend_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[catalog]\nurl = 'mysql://x'\n")
    with pytest.raises(ConfigError, match=r"catalog\.url: .*only sqlite"):
        load_config(path)


def test_broken_toml_reports_the_position(tmp_path: Path) -> None:
    path = write(tmp_path, "[store\nroot = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_config(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[audit]\ncheckpoint_every = 7\n")
    monkeypatch.setenv("INGESTD_CONFIG", str(path))
    assert load_config().audit.checkpoint_every == 7


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.store.__setattr__("read_back", False)


def test_camera_volumes_are_vfat_or_exfat_unless_a_rule_lists_more(tmp_path: Path) -> None:
    rule = "[[camera]]\nmatch = { SUBSYSTEM = 'block' }\ndriver = 'mass-storage'\n"
    [default] = load_config(write(tmp_path, rule)).camera_rules()
    assert default.options.filesystems == ("vfat", "exfat")
    [ext4] = load_config(write(tmp_path, rule + "filesystems = ['ext4', 'vfat', 'ext4']\n")).camera_rules()
    assert ext4.options.filesystems == ("ext4", "vfat")
    for bad, reason in [
        ("['ntfs']", r"camera\[0\]\.filesystems\[0\]: .*'vfat', 'exfat' or 'ext4'"),
        ("[]", "at least one"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            load_config(write(tmp_path, rule + f"filesystems = {bad}\n"))


def test_a_password_file_gives_the_rule_its_password(tmp_path: Path) -> None:
    secret = tmp_path / "camera-password"
    secret.write_text("123456\n# the first line is the password\n", encoding="ascii")
    secret.chmod(0o600)
    path = write(
        tmp_path, f"[[camera]]\nmatch = {{ A = 'b' }}\ndriver = 'serial'\npassword_file = '{secret}'\n"
    )
    [rule] = load_config(path).camera_rules()
    assert rule.options.password == "123456"


@pytest.mark.parametrize(
    ("mode", "content", "expected"),
    [
        (0o640, "123456\n", "not be accessible to group or others"),
        (0o604, "123456\n", "not be accessible to group or others"),
        (0o600, "\n", "first line must be the password"),
        (0o600, "1234567\n", "first line must be the password"),
    ],
)
def test_a_password_file_others_can_read_or_that_holds_no_password_is_refused(
    tmp_path: Path, mode: int, content: str, expected: str
) -> None:
    secret = tmp_path / "camera-password"
    secret.write_text(content, encoding="ascii")
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=expected) as refused:
        read_password_file(secret)
    assert str(secret) in str(refused.value)
    assert "123456" not in str(refused.value)
    assert refused.value.exit_code == 78


def test_a_password_file_that_is_a_symlink_or_missing_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "camera-password"
    secret.write_text("123456\n", encoding="ascii")
    secret.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(ConfigError, match="password file"):
        read_password_file(link)
    with pytest.raises(ConfigError, match="password file"):
        read_password_file(tmp_path / "absent")


def test_a_rule_takes_a_password_or_a_password_file_not_both(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[[camera]]\nmatch = { A = 'b' }\ndriver = 'serial'\npassword = '1'\npassword_file = '/x'\n"
    )
    with pytest.raises(ConfigError, match="password or password_file, not both"):
        load_config(path)


def test_the_printed_configuration_masks_inline_passwords(tmp_path: Path) -> None:
    path = write(tmp_path, "[[camera]]\nmatch = { A = 'b' }\ndriver = 'serial'\npassword = '654321'\n")
    shown = load_config(path).redacted_json()
    assert "654321" not in shown
    assert '"password": "***"' in shown


VAULT = "[vault]\nenabled = true\nbucket = 'evidence'\naccess_key_id = 'AK'\n"


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://s3.example.org", "plain http is allowed only to a loopback address"),
        ("ftp://127.0.0.1", "must be an http"),
        ("s3.example.org", "must be an http"),
    ],
)
def test_vault_endpoint_is_https_or_loopback(tmp_path: Path, endpoint: str, reason: str) -> None:
    checked_only = VAULT.replace("enabled = true", "enabled = false")  # as `ingestd vault check` reads it
    with pytest.raises(ConfigError, match=f"vault.endpoint: .*{reason}"):
        load_config(write(tmp_path, checked_only + f"endpoint = '{endpoint}'\n"))
    for good in ("https://s3.example.org", "http://127.0.0.1:7480", "http://[::1]:7480"):
        assert load_config(write(tmp_path, checked_only + f"endpoint = '{good}'\n")).vault.endpoint == good


def test_an_enabled_vault_needs_its_endpoint_and_a_valid_bucket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vault: .*enabled needs endpoint"):
        load_config(write(tmp_path, VAULT))
    complete = "[vault]\nenabled = true\nendpoint = 'https://s3.example.org'\nbucket = 'evidence'\n"
    complete += "access_key_id = 'station-7'\n"
    enabled = load_config(write(tmp_path, complete)).vault
    assert (enabled.enabled, enabled.concurrency, enabled.replication_deadline_hours) == (True, 2, 24)
    with pytest.raises(ConfigError, match=r"vault\.part_size_mib: .*greater than or equal to 5"):
        load_config(write(tmp_path, complete + "part_size_mib = 4\n"))
    with pytest.raises(ConfigError, match=r"vault\.bucket: .*not an S3 bucket name"):
        load_config(write(tmp_path, "[vault]\nbucket = 'Evidence_Bucket'\n"))
    assert Config().vault.enabled is False


def secret(tmp_path: Path, text: str = "s3cr3t\n", mode: int = 0o600) -> Path:
    path = tmp_path / "vault-secret"
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="a secret file owned by root is created by root")
def test_the_vault_secret_is_read_only_from_a_root_owned_0600_file(tmp_path: Path) -> None:
    path = secret(tmp_path)
    assert read_secret_file(path) == "s3cr3t"

    path.chmod(0o640)
    with pytest.raises(
        VaultSecretError, match=f"{path}: must not be accessible to group or others, has mode 0640"
    ):
        read_secret_file(path)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(VaultSecretError, match=f"{path}: must be owned by root, is owned by uid 65534"):
        read_secret_file(path)
    os.chown(path, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(VaultSecretError, match=f"{link}: cannot open"):
        read_secret_file(link)
    for bad in ("", "two words\n"):
        with pytest.raises(VaultSecretError, match="exactly one secret key"):
            read_secret_file(secret(tmp_path, bad))
    with pytest.raises(VaultSecretError, match="file not found") as missing:
        read_secret_file(tmp_path / "absent")
    assert missing.value.exit_code == 78


@pytest.mark.skipif(os.geteuid() != 0, reason="a secret file owned by root is created by root")
def test_check_for_run_refuses_an_enabled_vault_whose_secret_file_the_daemon_would_refuse(
    tmp_path: Path,
) -> None:
    path = secret(tmp_path, mode=0o644)
    text = (
        "[vault]\nenabled = true\nendpoint = 'https://s3.example.org'\nbucket = 'evidence'\n"
        f"access_key_id = 'station-7'\nsecret_access_key_file = '{path}'\n"
    )
    config_path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"vault.secret_access_key_file {path}: must not be accessible"):
        check_for_run(load_config(config_path), config_path)
    path.chmod(0o600)
    assert check_for_run(load_config(config_path), config_path) == []


def test_bay_display_listens_on_loopback_unless_remote_is_allowed(tmp_path: Path) -> None:
    remote = "[bay_display]\nenabled = true\nlisten = '192.0.2.10:8947'\n"
    with pytest.raises(
        ConfigError, match=r"bay_display\.listen: .*192\.0\.2\.10 is not a loopback address; set "
    ):
        load_config(write(tmp_path, remote))
    with pytest.raises(ConfigError, match=r"bay_display\.listen: .*'kiosk\.lan' is not an IP address"):
        load_config(write(tmp_path, "[bay_display]\nlisten = 'kiosk.lan:8947'\n"))
    assert load_config(write(tmp_path, remote + "allow_remote = true\n")).bay_display.address() == (
        "192.0.2.10",
        8947,
    )
    assert load_config(write(tmp_path, "[bay_display]\nlisten = '[::1]:8947'\n")).bay_display.address() == (
        "::1",
        8947,
    )
