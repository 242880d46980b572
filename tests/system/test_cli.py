"""The command lines as an operator meets them: clear one-line errors, reload, watchdog, the demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.objectstore import unseal_tree
from tests.system.harness import Daemon, wait_for

ENTRY = {
    "ingestd": "from ingestd.cli import main; main()",
    "ingestctl": "from ingestd.ctl import main; main()",
}


def run(program: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY[program], *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[store]\nreadback = true\n", "store.readback: unknown key"),
        ("[store]\nchunk_mib = 'four'\n", "store.chunk_mib: Input should be a valid integer"),
        ("[catalog\nurl = 1\n", "not valid TOML"),
        ("[[camera]]\nmatch = {}\ndriver = 'serial'\n", "camera[0].match"),
        (
            "[[dock]]\nport = 'folder:/a'\nlabel = 'Bay 3'\n[[dock]]\nport = 'folder:/b'\nlabel = 'Bay 3'\n",
            "dock[1].label: 'Bay 3' is already dock[0].label",
        ),
        (
            "[[dock]]\nport = 'folder:/a'\nlabel = 'Bay 1'\n[[dock]]\nport = 'folder:/a'\nlabel = 'Bay 2'\n",
            "dock[1].port: 'folder:/a' is already dock[0].port",
        ),
        ("[[dock]]\nport = 'folder:/a'\n", "dock[0].label: Field required"),
    ],
)
def test_a_bad_config_file_gets_one_clear_line_and_exit_78(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    for program, command in (("ingestd", "check-config"), ("ingestd", "run"), ("ingestctl", "verify")):
        done = run(program, command, "--config", str(config))
        assert done.returncode == 78, (program, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert str(config) in lines[0]
        assert expected in lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[camera]]\nmatch = { SUBSYSTEM = 'folder' }\ndriver = 'scsi'\n",
            "camera[0].driver: 'scsi' is not an installed driver (available: mass-storage, serial",
        ),
        ("[control]\nsocket_group = 'ingestd-no-such-group'\n", "control.socket_group: no group"),
        (
            "[[camera]]\nmatch = { SUBSYSTEM = 'folder' }\ndriver = 'serial'\npassword_file = '{pw}'\n",
            "camera[0].password_file: {pw}: must not be accessible to group or others, has mode 0644",
        ),
    ],
)
def test_check_config_refuses_what_run_refuses_with_the_same_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    password = tmp_path / "camera.pw"
    password.write_text("000000\n", encoding="utf-8")
    password.chmod(0o644)
    station = tmp_path / "station"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{station / "state"}"\n[catalog]\nurl = "sqlite:///{station}/c.db"\n'
        f'[store]\nroot = "{station / "store"}"\n' + text.replace("{pw}", str(password)),
        encoding="utf-8",
    )
    said = {}
    for command in ("check-config", "run"):
        done = run("ingestd", command, "--config", str(config))
        assert done.returncode == 78, (command, done.stderr)
        assert done.stdout == "", command
        said[command] = done.stderr
    assert said["check-config"] == said["run"]
    assert said["run"].startswith(f"ingestd: error: config {config}: "), said["run"]
    assert expected.replace("{pw}", str(password)) in said["run"]
    assert said["run"].count("\n") == 1
    assert not station.exists()  # refused before anything was set up


def test_wrong_flags_and_missing_paths_are_refused_clearly(tmp_path: Path) -> None:
    done = run("ingestd", "import", str(tmp_path / "absent"), "--device-id", "ZFY0001")
    assert done.returncode == 2
    assert "absent" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("ingestd", "import", str(tmp_path), "--device-id", "TOO-LONG-SERIAL")
    assert done.returncode == 2
    assert "--device-id" in done.stderr
    done = run("ingestctl", "verify", "--no-such-flag")
    assert done.returncode == 2
    assert "No such option '--no-such-flag'" in done.stderr


def test_an_unusable_state_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    catalog = f'[catalog]\nurl = "sqlite:///{tmp_path}/c.db"\n'
    config = tmp_path / "config.toml"
    # A set-up catalog, so ingestctl gets as far as the state directory.
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n{catalog}', encoding="utf-8")
    assert run("ingestd", "migrate", "--config", str(config)).returncode == 0
    config.write_text(f'[daemon]\nstate_dir = "{blocker / "state"}"\n{catalog}', encoding="utf-8")
    done = run("ingestd", "run", "--config", str(config))
    assert done.returncode == 74, done.stderr
    assert done.stderr.strip() == f"ingestd: error: Not a directory: {blocker / 'state'}"
    # A reader creates nothing: it fails where it first reads, the station's published public key.
    done = run("ingestctl", "verify", "--config", str(config))
    assert done.returncode == 40, done.stderr
    key = blocker / "state" / "audit-signing.pub"
    assert done.stderr.strip() == f"ingestctl: error: audit signing key {key}: cannot open: Not a directory"


def test_commands_on_a_station_never_set_up_create_nothing(tmp_path: Path) -> None:
    station = tmp_path / "station"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{station / "state"}"\n[catalog]\nurl = "sqlite:///{station}/state/c.db"\n'
        f'[store]\nroot = "{station / "store"}"\n[control]\nsocket = "{tmp_path / "control.sock"}"\n',
        encoding="utf-8",
    )
    for command in ("verify", "status", "cameras", "flags", "custody"):
        done = run("ingestctl", command, "--config", str(config))
        assert done.returncode != 0, (command, done.stdout)
        assert "Traceback" not in done.stderr
        assert "has not been set up" in done.stderr or "not running" in done.stderr, (command, done.stderr)
    assert not station.exists()  # no catalog, no signing key, no store: a reader creates nothing


def test_sighup_reloads_and_a_broken_reload_keeps_the_running_config(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for("reloaded", lambda: daemon.events("reloaded"))
    daemon.extra_config = "\n[store]\nbroken = true\n"  # a second [store] table and an unknown key
    daemon.write_config()
    daemon.process.send_signal(signal.SIGHUP)
    refused = wait_for("reload refused", lambda: daemon.events("reload_refused"))
    assert str(daemon.config_path) in refused[0]["error"]
    assert daemon.process.poll() is None  # still serving
    daemon.extra_config = "\n[[camera]]\nmatch = { SUBSYSTEM = 'usb' }\ndriver = 'scsi'\n"  # as check-config
    daemon.write_config()
    daemon.process.send_signal(signal.SIGHUP)
    refused = wait_for("second reload refused", lambda: daemon.events("reload_refused")[1:])
    assert "camera[2].driver: 'scsi' is not an installed driver" in refused[0]["error"]
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_the_watchdog_is_pinged_from_the_supervising_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # inherited by the daemon: ping every 0.2 s
    daemon = Daemon(base=tmp_path / "station")
    try:
        daemon.start()
        assert daemon.watchdog_polls(2.0) >= 4
        assert daemon.stop() == 0
    finally:
        daemon.close()
        unseal_tree(daemon.base)


def test_the_demo_docks_simulated_cameras_and_ends_with_a_clean_verify(tmp_path: Path) -> None:
    done = run("ingestd", "demo", "--files", "2", "--size-mib", "1", "--workdir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ZFY0001" in done.stdout
    assert "ZFY0002" in done.stdout
    assert "clean" in done.stdout
    unseal_tree(tmp_path / "demo")
