"""The simulated camera volume: deterministic, firmware-style names and real mvhd times; its images."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.mass_storage import IDENTITY_FILE, parse_identity_file
from drivers.mp4 import read_creation_time
from drivers.simulator.volume import build_volume, make_image

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def build(root: Path, seed: int = 1, count: int = 6, hostile: bool = False) -> list[Path]:
    return build_volume(
        root,
        device_serial="0000001",
        officer_name="张三",
        count=count,
        size_bytes=5000,
        start=START,
        seed=seed,
        hostile=hostile,
    )


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def test_same_seed_same_volume_other_seed_other_content(tmp_path: Path) -> None:
    first, again, other = (build(tmp_path / name, seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert [path.name for path in first] == [path.name for path in again]
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    other_digests = set(digest_tree(tmp_path / "c").values())
    assert not set(digest_tree(tmp_path / "a").values()) & other_digests - {
        digest_tree(tmp_path / "a")[IDENTITY_FILE]
    }
    assert [path.name for path in other] != [path.name for path in first]


def test_names_sizes_and_times_agree(tmp_path: Path) -> None:
    made = build(tmp_path, count=8)
    previous_end: datetime | None = None
    for number, path in enumerate(made, start=1):
        assert path.parent == tmp_path / "DCIM" / "100MEDIA"
        created = read_creation_time(path)
        assert created is not None
        local = created + timedelta(hours=8)  # names are in Asia/Shanghai time
        assert path.name == f"ZFY0000001_{local:%Y%m%d}_{local:%H%M%S}_{number:04d}.MP4"
        assert path.stat().st_size == 5000
        end = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        assert 30 <= (end - created).total_seconds() <= 900  # mtime is when the camera closed the file
        if previous_end is not None:
            assert created > previous_end  # recordings never overlap
        previous_end = end
    assert read_creation_time(made[0]) == START
    assert len({hashlib.sha256(path.read_bytes()).digest() for path in made}) == len(made)


def test_identity_file_is_written_in_gbk(tmp_path: Path) -> None:
    build(tmp_path, count=0)
    data = (tmp_path / IDENTITY_FILE).read_bytes()
    assert "张三".encode("gbk") in data
    identity = parse_identity_file(data, "sim")
    assert (identity.device_serial, identity.officer_name) == ("0000001", "张三")


def test_hostile_extras_exist_as_raw_entries(tmp_path: Path) -> None:
    made = build(tmp_path, count=1, hostile=True)
    raw_names = {os.fsencode(path.relative_to(tmp_path)) for path in made}
    gbk_prefix = b"DCIM/100MEDIA/" + "执法仪_20261122_".encode("gbk")
    assert any(name.startswith(gbk_prefix) for name in raw_names)
    assert any(len(name.rsplit(b"/", 1)[-1]) == 255 for name in raw_names)
    assert any(b"\n" in name for name in raw_names)
    assert (tmp_path / "DCIM/100MEDIA/passwd.MP4").readlink() == Path("/etc/passwd")
    assert (tmp_path / "DCIM/etc").readlink() == Path("/etc")
    assert (tmp_path / "DCIM/100MEDIA/fifo.MP4").is_fifo()
    assert (tmp_path / "DCIM/100MEDIA/socket.MP4").is_socket()
    assert (tmp_path / "..evil").is_file()


def test_vfat_image_with_mtools_holds_the_files(tmp_path: Path) -> None:
    for tool in ("mkfs.vfat", "mcopy", "mmd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (dosfstools, mtools)")
    source = tmp_path / "card"
    made = build(source, count=3, hostile=True)
    image = make_image(source, tmp_path / "card.vfat", fstype="vfat")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}
    subprocess.run(["mcopy", "-s", "-n", "-i", str(image), "::/DCIM", str(out)], check=True, env=env)
    for path in made[:3]:
        copied = out / path.relative_to(source)
        assert copied.read_bytes() == path.read_bytes()
    # FAT holds no symlinks or special files: they are left out, never replaced by their targets.
    assert not (out / "DCIM/100MEDIA/passwd.MP4").exists()
    assert not (out / "DCIM/etc").exists()
    assert not (out / "DCIM/100MEDIA/fifo.MP4").exists()


def test_unknown_image_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported image filesystem 'ntfs'"):
        make_image(tmp_path, tmp_path / "x.img", fstype="ntfs")
