"""The serial protocol's pure codecs and its resynchronising frame decoder."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest

from drivers import protocol as p
from drivers.base import Battery, CameraIdentity, Resolution, StorageInfo

IDENTITY = CameraIdentity("0000001", "000123", "张三", "110000000000", "北京市公安局")


def frames_of(decoder: p.FrameDecoder, data: bytes, *, chunk: int | None = None) -> list[p.Frame]:
    if chunk is None:
        return decoder.feed(data)
    out: list[p.Frame] = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i : i + chunk])
    return out


# CRC and framing


def test_crc16_matches_the_ccitt_false_check_value() -> None:
    assert p.crc16_ccitt(b"123456789") == 0x29B1
    assert p.crc16_ccitt(b"") == 0xFFFF


def test_frame_layout_is_magic_length_seq_code_payload_crc() -> None:
    raw = p.encode_frame(7, 0x03, b"\x01\x02")
    assert raw[:2] == b"\xa5\x5a"
    assert struct.unpack(">HBB", raw[2:6]) == (2, 7, 0x03)
    assert raw[6:8] == b"\x01\x02"
    assert struct.unpack(">H", raw[8:]) == (p.crc16_ccitt(raw[2:8]),)
    assert len(p.encode_frame(0, 0, bytes(p.MAX_PAYLOAD))) == p.MAX_FRAME == 264


def test_encode_refuses_oversized_payload_and_out_of_range_header() -> None:
    with pytest.raises(p.FieldError, match="exceeds the maximum of 256"):
        p.encode_frame(0, 1, bytes(p.MAX_PAYLOAD + 1))
    with pytest.raises(p.FieldError, match="one byte"):
        p.encode_frame(256, 1)


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_decoder_round_trips_frames_however_the_bytes_are_split(chunk: int | None) -> None:
    sent = [p.Frame(seq, code, bytes(range(seq))) for seq, code in [(1, 1), (2, 0x83), (200, 0x0A)]]
    stream = b"".join(p.encode_frame(f.seq, f.code, f.payload) for f in sent)
    decoder = p.FrameDecoder()
    assert frames_of(decoder, stream, chunk=chunk) == sent
    assert decoder.pending == 0
    assert decoder.rejections == []


def test_decoder_skips_garbage_before_and_between_frames() -> None:
    a, b = p.encode_frame(1, 2, b"x"), p.encode_frame(2, 3, b"yz")
    decoder = p.FrameDecoder()
    frames = decoder.feed(b"\x00\xff\xa5junk" + a + b"\x5a\xa5\xa5" + b)
    assert [f.seq for f in frames] == [1, 2]
    reasons = {r.reason for r in decoder.drain_rejections()}
    assert reasons == {"garbage"}


def test_decoder_rejects_over_long_length_and_resyncs() -> None:
    over_long = p.MAGIC + struct.pack(">HBB", p.MAX_PAYLOAD + 1, 9, 9) + b"\x00" * 20
    good = p.encode_frame(4, 5, b"ok")
    decoder = p.FrameDecoder()
    assert decoder.feed(over_long + good) == [p.Frame(4, 5, b"ok")]
    assert [r.reason for r in decoder.rejections if r.reason != "garbage"] == ["length"]


def test_decoder_rejects_wrong_crc_and_keeps_the_next_frame() -> None:
    bad = bytearray(p.encode_frame(1, 1, b"abc"))
    bad[-1] ^= 0x01
    good = p.encode_frame(2, 1, b"def")
    decoder = p.FrameDecoder()
    assert decoder.feed(bytes(bad) + good) == [p.Frame(2, 1, b"def")]
    crc = [r for r in decoder.rejections if r.reason == "crc"]
    assert len(crc) == 1
    assert (crc[0].seq, crc[0].code) == (1, 1)


def test_decoder_finds_a_real_frame_that_started_inside_a_rejected_one() -> None:
    # A fake header whose announced length swallows the real frame: the CRC fails and the real one,
    # which starts inside the rejected span, must still come out.
    good = p.encode_frame(3, 0x85, b"\x00" + bytes(8))
    fake = p.MAGIC + struct.pack(">HBB", len(good) - 4, 0, 0)
    decoder = p.FrameDecoder()
    assert decoder.feed(fake + good) == [p.Frame(3, 0x85, b"\x00" + bytes(8))]


def test_a_fake_header_cannot_hold_back_a_complete_frame_behind_it() -> None:
    fake = p.MAGIC + struct.pack(">HBB", 200, 0, 0)  # would wait for 208 bytes that never come
    good = p.encode_frame(5, 0x82, b"\x00" + b"0000001")
    decoder = p.FrameDecoder()
    assert decoder.feed(fake + good) == [p.Frame(5, 0x82, b"\x00" + b"0000001")]
    assert decoder.pending == 0


def test_truncated_frame_is_never_delivered_and_stays_pending() -> None:
    raw = p.encode_frame(1, 1, b"hello world")
    decoder = p.FrameDecoder()
    assert decoder.feed(raw[:-3]) == []
    assert decoder.pending == len(raw) - 3
    # The rest arrives: now it is complete.
    assert decoder.feed(raw[-3:]) == [p.Frame(1, 1, b"hello world")]


def test_truncated_frame_followed_by_a_new_frame_yields_only_the_new_one() -> None:
    first = p.encode_frame(1, 1, bytes(30))
    second = p.encode_frame(2, 1, b"ok")
    decoder = p.FrameDecoder()
    assert decoder.feed(first[:10] + second) == [p.Frame(2, 1, b"ok")]


def test_decoder_buffer_stays_bounded_under_a_flood_of_garbage() -> None:
    rng = random.Random(1)
    decoder = p.FrameDecoder()
    for _ in range(200):
        decoder.feed(bytes(rng.randrange(256) for _ in range(97)) + p.MAGIC)
        assert decoder.pending <= p.MAX_FRAME + 97


def test_every_frame_survives_random_garbage_between_frames() -> None:
    rng = random.Random(42)
    sent = [p.Frame(i % 256, rng.randrange(1, 11), rng.randbytes(rng.randrange(0, 90))) for i in range(300)]
    stream = bytearray()
    for frame in sent:
        noise = rng.randbytes(rng.randrange(0, 12))
        if rng.random() < 0.3:  # fake headers, the hard case
            noise += p.MAGIC + struct.pack(">H", rng.randrange(0, 300))
        stream += noise + p.encode_frame(frame.seq, frame.code, frame.payload)
    decoder = p.FrameDecoder()
    assert frames_of(decoder, bytes(stream), chunk=17) == sent


# Replies


def test_reply_round_trip_and_checks() -> None:
    frame = p.FrameDecoder().feed(p.encode_reply(9, p.Command.READ_BATTERY, p.Status.OK, b"\x50\x01"))[0]
    assert frame.code == 0x89
    assert p.decode_reply(frame, p.Command.READ_BATTERY) == (p.Status.OK, b"\x50\x01")
    with pytest.raises(p.FrameError, match="does not answer command 0x0a"):
        p.decode_reply(frame, p.Command.READ_STORAGE)
    with pytest.raises(p.FrameError, match="unknown status 0x7f"):
        p.decode_reply(p.Frame(1, 0x81, b"\x7f"), p.Command.INIT_DEVICE)
    with pytest.raises(p.FrameError, match="no status byte"):
        p.decode_reply(p.Frame(1, 0x81, b""), p.Command.INIT_DEVICE)


def test_error_reply_detail_is_bounded() -> None:
    raw = p.encode_error_reply(1, p.Command.INIT_DEVICE, p.Status.BAD_PASSWORD, "x" * 500)
    frame = p.FrameDecoder().feed(raw)[0]
    status, data = p.decode_reply(frame, p.Command.INIT_DEVICE)
    assert status is p.Status.BAD_PASSWORD
    assert p.error_detail(data) == "x" * p.MAX_DETAIL


def test_only_set_time_is_not_idempotent() -> None:
    assert [c for c in p.Command if not c.idempotent] == [p.Command.SET_TIME]
    assert p.Command.READ_BATTERY.label == "ReadDeviceBatteryDumpEnergy"


# ZFY_INFO and text fields


def test_zfy_info_layout_and_round_trip() -> None:
    raw = p.encode_zfy_info(IDENTITY)
    assert len(raw) == p.ZFY_INFO_SIZE == 89
    assert raw[0:7] == b"0000001"
    assert raw[7:13] == b"000123"
    assert raw[13:45] == "张三".encode("gbk").ljust(32, b"\x00")
    assert raw[45:57] == b"110000000000"
    assert raw[57:89] == "北京市公安局".encode("gbk").ljust(32, b"\x00")
    assert p.decode_zfy_info(raw) == IDENTITY


def test_gbk_field_may_fill_its_whole_width() -> None:
    name = "张" * 16  # 32 bytes in GBK, no room for a terminator, none needed
    identity = CameraIdentity("0000001", "000123", name, "110000000000", "单位")
    assert p.decode_zfy_info(p.encode_zfy_info(identity)).officer_name == name


def test_over_long_gbk_text_is_refused_with_the_field_and_sizes() -> None:
    with pytest.raises(p.FieldError, match=r"userName: .* is 34 bytes in GBK; the field holds 32"):
        p.encode_text("张" * 17, 32, encoding="gbk", name="userName")


def test_text_outside_gbk_is_refused_naming_the_character() -> None:
    with pytest.raises(p.FieldError, match=r"unitName: '😀' cannot be encoded in GBK"):
        p.encode_text("公安😀", 32, encoding="gbk", name="unitName")
    with pytest.raises(p.FieldError, match="cSerial: '张' cannot be encoded in ASCII"):
        p.encode_zfy_info(CameraIdentity("00000张", "000123", "a", "1", "b"))


def test_text_with_nul_is_refused() -> None:
    with pytest.raises(p.FieldError, match="NUL"):
        p.encode_text("a\x00b", 32, encoding="gbk", name="userName")


def test_decode_stops_at_first_nul_and_rejects_invalid_gbk() -> None:
    assert p.decode_text(b"abc\x00junk", encoding="gbk", name="userName") == "abc"
    with pytest.raises(p.FieldError, match="userName: bytes ff80 are not valid GBK"):
        p.decode_text(b"\xff\x80\x00\x00", encoding="gbk", name="userName")
    with pytest.raises(p.FieldError, match="expected 89"):
        p.decode_zfy_info(bytes(88))


# Scalars


def test_password_must_be_six_printable_ascii_characters() -> None:
    assert p.encode_password("123456") == b"123456"
    for bad in ("12345", "1234567", "12345\n", "12345张"):
        with pytest.raises(p.FieldError, match="6 printable ASCII"):
            p.encode_password(bad)


def test_time_round_trips_at_millisecond_resolution_in_utc() -> None:
    when = datetime(2024, 5, 1, 8, 30, 15, 123456, tzinfo=UTC)
    decoded = p.decode_time(p.encode_time(when))
    assert decoded == datetime(2024, 5, 1, 8, 30, 15, 123000, tzinfo=UTC)
    assert decoded.tzinfo is UTC
    beijing = timezone(timedelta(hours=8))
    assert p.decode_time(p.encode_time(when.astimezone(beijing))) == decoded


def test_naive_time_is_refused() -> None:
    with pytest.raises(p.FieldError, match="no timezone"):
        p.encode_time(datetime(2024, 5, 1, 8, 30))  # noqa: DTZ001  # the point of the test


def test_out_of_range_time_from_a_camera_is_a_field_error() -> None:
    with pytest.raises(p.FieldError, match="out of range"):
        p.decode_time(struct.pack(">q", 2**62))


def test_battery_resolution_storage_round_trip_and_validation() -> None:
    assert p.decode_battery(p.encode_battery(Battery(80, charging=True))) == Battery(80, charging=True)
    assert p.decode_resolution(p.encode_resolution(Resolution(1920, 1080))) == Resolution(1920, 1080)
    storage = StorageInfo(total_bytes=2**40, free_bytes=2**39)
    assert p.decode_storage(p.encode_storage(storage)) == storage
    with pytest.raises(p.FieldError, match=r"outside 0\.\.100"):
        p.decode_battery(b"\x65\x00")
    with pytest.raises(p.FieldError, match="exceed total"):
        p.decode_storage(struct.pack(">QQ", 1, 2))
    with pytest.raises(p.FieldError, match="expected 4"):
        p.decode_resolution(b"\x00")
