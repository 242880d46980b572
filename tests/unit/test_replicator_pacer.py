"""The replicator's pacer: ingest goes first, the bandwidth cap holds, and a stop unwinds a transfer."""

from __future__ import annotations

import threading

import pytest

from ingestd.replicator import Pacer, Stopping


def test_no_byte_is_sent_while_a_dock_is_ingesting() -> None:
    answers = iter([True, True, False])
    asked: list[bool] = []

    def busy() -> bool:
        asked.append(True)
        return next(answers)

    Pacer(0, threading.Event(), busy)(4096)
    assert len(asked) == 3  # it asked until the dock was done, then let the bytes go


def test_a_stop_while_waiting_for_ingest_unwinds_the_transfer() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopping):
        Pacer(0, stop, lambda: True)(1)


def test_more_bytes_than_the_cap_allows_now_wait_and_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    pacer = Pacer(1024 * 1024, stop)
    pacer(512 * 1024)  # within the first second's allowance: no wait
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(Stopping):
        pacer(60 * 1024 * 1024)  # a minute's worth at 1 MiB/s: it must wait, so the stop ends it
