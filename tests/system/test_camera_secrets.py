"""Camera passwords live in a file only the daemon reads: the real daemon authenticates a simulated serial
camera with the password from a root-only file, while an operator's `ingestctl` (a real OS user with a
role) works from the shared configuration without any access to that file."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from store.models import SessionState
from tests.support.osusers import OsUsers, run_ctl_as
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_cli import run
from tests.system.test_daemon import wait_sessions


def secret_file(daemon: Daemon, mode: int) -> Path:
    daemon.base.mkdir(parents=True, exist_ok=True)
    path = daemon.base / "camera-password"
    path.write_text("000000\n", encoding="ascii")
    path.chmod(mode)
    return path


def test_the_daemon_uses_a_root_only_password_file_that_operators_never_need(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], shared_dir: Path, os_users: OsUsers
) -> None:
    sock, viewers = os_users.group("sock"), os_users.group("vie")
    viewer = os_users.user("v", [viewers, sock])
    daemon.control_dir = shared_dir
    daemon.control_config = f'socket_group = "{sock}"\nviewer_group = "{viewers}"'
    secret = secret_file(daemon, 0o600)
    daemon.serial_password = f'password_file = "{secret}"'
    camera = make_camera("ZFY3201", files=1)
    daemon.start()
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY3201")
    assert session.state is SessionState.DONE  # authenticated with the password from the file

    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)
    status = run_ctl_as(viewer, "status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stderr
    peek = subprocess.run(["cat", str(secret)], user=viewer, capture_output=True, check=False)
    assert peek.returncode != 0  # the operator cannot read it, and did not need to

    shown = run("ingestd", "check-config", "--config", str(daemon.config_path))
    assert shown.returncode == 0, shown.stderr
    assert str(secret) in shown.stdout
    assert "000000" not in shown.stdout + shown.stderr


def test_a_password_file_others_can_read_stops_the_daemon_with_one_line(daemon: Daemon) -> None:
    secret = secret_file(daemon, 0o640)
    daemon.serial_password = f'password_file = "{secret}"'
    daemon.write_config()
    done = run("ingestd", "run", "--config", str(daemon.config_path))
    assert done.returncode == 78, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert str(secret) in line
    assert "not be accessible to group or others" in line
    assert "000000" not in done.stdout + done.stderr


def test_a_reload_with_a_loosened_password_file_is_refused_and_the_daemon_goes_on(daemon: Daemon) -> None:
    secret = secret_file(daemon, 0o600)
    daemon.serial_password = f'password_file = "{secret}"'
    daemon.start()
    assert daemon.process is not None
    secret.chmod(0o644)
    daemon.process.send_signal(signal.SIGHUP)
    refused = wait_for("reload refused", lambda: daemon.events("reload_refused"))
    assert str(secret) in refused[0]["error"]
    assert "not be accessible to group or others" in refused[0]["error"]
    assert daemon.process.poll() is None  # still serving, with the rules it had
    assert daemon.stop() == 0


def test_check_config_masks_an_inline_password_and_says_where_it_belongs(daemon: Daemon) -> None:
    daemon.base.mkdir(parents=True)
    daemon.write_config()
    daemon.config_path.chmod(0o644)
    shown = run("ingestd", "check-config", "--config", str(daemon.config_path))
    assert shown.returncode == 0, shown.stderr
    assert "000000" not in shown.stdout
    assert '"password": "***"' in shown.stdout
    assert "move it to password_file" in shown.stderr
