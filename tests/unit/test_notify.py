"""ipwatch.notify against a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipwatch import notify
from ipwatch.notify import Notifier, watchdog_interval
from tests.peers.notify import NotifyListener


@pytest.fixture
def notifier(notify_socket: NotifyListener) -> Iterator[Notifier]:
    with Notifier(notify_socket.env) as sender:
        yield sender


def received(listener: NotifyListener, count: int) -> list[bytes]:
    listener.wait_for(lambda _: len(listener.raw()) >= count)
    return listener.raw()


@pytest.mark.parametrize(
    ("call", "datagram"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.ready("ipv4 203.0.113.7"), b"READY=1\nSTATUS=ipv4 203.0.113.7"),
        (lambda n: n.status("3 of 3 sources agree"), b"STATUS=3 of 3 sources agree"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.stopping("stopping"), b"STOPPING=1\nSTATUS=stopping"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
    ],
)
def test_each_call_sends_exactly_one_datagram(
    notify_socket: NotifyListener, notifier: Notifier, call: object, datagram: bytes
) -> None:
    assert callable(call)
    assert call(notifier) is True
    assert received(notify_socket, 1) == [datagram]


def test_status_is_one_line_and_utf8(notify_socket: NotifyListener, notifier: Notifier) -> None:
    notifier.status("config invalid:\n  source[0].servers: empty\r\n")
    notifier.status("ipv4 203.0.113.5 → 203.0.113.7 (Zürich)")
    assert received(notify_socket, 2) == [
        b"STATUS=config invalid: source[0].servers: empty",
        "STATUS=ipv4 203.0.113.5 → 203.0.113.7 (Zürich)".encode(),
    ]


def test_reloading_carries_the_monotonic_time_in_the_same_datagram(
    notify_socket: NotifyListener, notifier: Notifier
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading the config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (datagram,) = received(notify_socket, 1)
    lines = datagram.split(b"\n")
    assert lines[0] == b"RELOADING=1"
    assert lines[1].startswith(b"MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix(b"MONOTONIC_USEC=")) <= after
    assert lines[2:] == [b"STATUS=reloading the config"]


def test_another_process_reaches_the_socket(notify_socket: NotifyListener) -> None:
    code = "from ipwatch.notify import Notifier; Notifier().ready('from a child')"
    env = {**os.environ, **notify_socket.env}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert notify_socket.wait_for(READY="1") == {"READY": "1", "STATUS": "from a child"}


def test_abstract_socket_names() -> None:
    listener = NotifyListener("\0ipwatch-test-" + secrets.token_hex(8))
    try:
        assert listener.env["NOTIFY_SOCKET"].startswith("@ipwatch-test-")
        with Notifier(listener.env) as sender:
            assert sender.watchdog()
        assert listener.wait_for(WATCHDOG="1")
    finally:
        listener.close()


def test_without_notify_socket_nothing_happens(caplog: pytest.LogCaptureFixture) -> None:
    sender = Notifier({})
    assert not sender.enabled
    assert sender.ready("x") is False
    assert sender.reloading() is False
    assert caplog.records == []


def test_a_vanished_socket_is_logged_once_and_found_again_when_rebound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify.sock"
    first = NotifyListener(str(path))
    sender = Notifier(first.env)
    assert sender.ready()
    first.close()
    path.unlink()
    with caplog.at_level(logging.INFO, logger="ipwatch"):
        assert sender.watchdog() is False
        assert sender.watchdog() is False
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert str(path) in caplog.records[0].getMessage()
        second = NotifyListener(str(path))  # what systemd does when it re-executes
        try:
            assert sender.watchdog() is True
            assert second.wait_for(WATCHDOG="1")
        finally:
            second.close()
            sender.close()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_a_relative_path_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ipwatch"):
        assert Notifier({"NOTIFY_SOCKET": "notify.sock"}).ready() is False
    assert "not an absolute path" in caplog.text


def test_a_receiver_that_never_reads_cannot_stall_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "SEND_TIMEOUT", 0.1)
    path = tmp_path / "stuck.sock"
    results: list[bool] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:
        stuck.bind(str(path))
        with Notifier({"NOTIFY_SOCKET": str(path)}) as sender:
            # Linux queues max_dgram_qlen (10 by default) datagrams per receiver, then blocks.
            def ping() -> None:
                results.extend(sender.watchdog() for _ in range(16))

            pinger = threading.Thread(target=ping, daemon=True)
            pinger.start()
            pinger.join(timeout=10)
            assert not pinger.is_alive(), "a full notify socket blocked the sender"
    assert results[0] is True
    assert results[-1] is False


@given(st.text())
def test_any_status_stays_one_assignment(text: str) -> None:
    line = notify.one_line(text)
    assert "\n" not in line and "\r" not in line
    assert line.split() == text.split()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "4242"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "4242\n"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "2min"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_reads_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


def test_wait_for_matches_in_order_and_fails_at_its_deadline(
    notify_socket: NotifyListener, notifier: Notifier
) -> None:
    notifier.ready("first")
    notifier.reloading()
    notifier.ready("second")
    assert notify_socket.wait_for(READY="1")["STATUS"] == "first"
    assert "MONOTONIC_USEC" in notify_socket.wait_for(RELOADING="1")
    assert notify_socket.wait_for(lambda m: m.get("READY") == "1")["STATUS"] == "second"
    with pytest.raises(pytest.fail.Exception, match="READY=1"):
        notify_socket.wait_for(READY="1", timeout=0.1)
    assert len(notify_socket.messages()) == 3
