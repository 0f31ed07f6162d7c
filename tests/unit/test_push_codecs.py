"""The push channels' pure parts: what counts as an announcement, a NOTIFY, a property set, a
description's event URL; the debounce; and the wakeup that a flood cannot grow."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Any

import pytest

from ipwatch.pushes import Debounce, Pushes
from ipwatch.sources import interface, natpmp, upnp
from ipwatch.sources.natpmp_push import Ignored, parse_announcement
from ipwatch.sources.upnp_events import (
    Invalid,
    event_url,
    granted_seconds,
    next_seq,
    parse_notify,
    parse_property_set,
)

# What miniupnpd 2.3.1 sent in the lab (LAB.md, "Router push").
PROPERTY_SET = (
    b'<e:propertyset xmlns:e="urn:schemas-upnp-org:event-1-0">'
    b"<e:property><PossibleConnectionTypes>IP_Routed</PossibleConnectionTypes></e:property>"
    b"<e:property><ConnectionStatus>Connected</ConnectionStatus></e:property>"
    b"<e:property><ExternalIPAddress>198.51.101.10</ExternalIPAddress></e:property>"
    b"<e:property><PortMappingNumberOfEntries>0</PortMappingNumberOfEntries></e:property>"
    b"<e:property><SystemUpdateID>1</SystemUpdateID></e:property></e:propertyset>"
)


def announcement(address: str, epoch: int = 7, version: int = 0, result: int = 0) -> bytes:
    return struct.pack("!BBHI", version, 128, result, epoch) + socket.inet_aton(address)


def test_a_natpmp_announcement_gives_its_epoch_and_address() -> None:
    assert parse_announcement(announcement("198.51.102.20")) == (
        7,
        ipaddress.IPv4Address("198.51.102.20"),
    )


def test_epoch_zero_with_an_address_is_an_announcement() -> None:
    # miniupnpd restarts its epoch at each event; the new address came with epoch 0.
    assert parse_announcement(announcement("198.51.102.20", epoch=0))[0] == 0


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (announcement("0.0.0.0", epoch=0), "no address"),
        (b"\x02\x80" + bytes(22), "PCP"),
        (announcement("198.51.102.20")[:8], "8 bytes"),
        (announcement("198.51.102.20") + b"\0", "13 bytes"),
        (announcement("198.51.102.20", version=1), "version 1"),
        (announcement("198.51.102.20", result=3), "result 3"),
    ],
)
def test_what_is_no_announcement_is_ignored_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(Ignored, match=why):
        parse_announcement(data)


def test_a_property_set_gives_its_variables() -> None:
    variables = parse_property_set(PROPERTY_SET)
    assert variables["ExternalIPAddress"] == "198.51.101.10"
    assert variables["ConnectionStatus"] == "Connected"


@pytest.mark.parametrize(
    "body",
    [
        # Billion laughs and an external entity: refused before any parsing.
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
        b'<e:propertyset xmlns:e="urn:schemas-upnp-org:event-1-0"/>',
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b"<propertyset/>",
        b'<e:propertyset xmlns:e="urn:schemas-upnp-org:event-1-0"><e:property>'
        b"<A>1</A><B>2</B></e:property></e:propertyset>",
        b'<e:propertyset xmlns:e="urn:schemas-upnp-org:event-1-0"><e:property>'
        b"<A><B>1</B></A></e:property></e:propertyset>",
        b"<unclosed",
    ],
)
def test_anything_but_a_plain_property_set_is_refused(body: bytes) -> None:
    with pytest.raises(Invalid):
        parse_property_set(body)


def notify_head(**headers: str) -> bytes:
    fields = {"NT": "upnp:event", "NTS": "upnp:propchange", "SID": "uuid:1", "SEQ": "0"}
    fields.update(headers)
    lines = ["NOTIFY /ipwatch/abc HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return "\r\n".join(lines).encode()


def test_a_notify_gives_path_sid_seq_and_variables() -> None:
    notify = parse_notify(notify_head(SEQ="3"), PROPERTY_SET)
    assert (notify.path, notify.sid, notify.seq) == ("/ipwatch/abc", "uuid:1", 3)
    assert notify.variables["ExternalIPAddress"] == "198.51.101.10"


@pytest.mark.parametrize(
    "head",
    [
        notify_head(SEQ="-1"),
        notify_head(SEQ="4294967296"),
        notify_head(NT="ssdp:all"),
        notify_head(NTS="upnp:other"),
        b"GET /ipwatch/abc HTTP/1.1\r\nSID: uuid:1",
        notify_head() + b"\r\nSID: uuid:2",  # given twice
        notify_head() + b"\r\nno colon here",
    ],
)
def test_a_request_that_is_no_proper_notify_is_refused(head: bytes) -> None:
    with pytest.raises(Invalid):
        parse_notify(head, PROPERTY_SET)


def test_seq_wraps_to_one_not_zero() -> None:
    assert next_seq(0) == 1 and next_seq(4294967295) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("Second-1800", 1800), ("second-5", 5), ("Second-infinite", 86400)],
)
def test_the_granted_timeout(header: str, seconds: int) -> None:
    assert granted_seconds(header) == seconds


@pytest.mark.parametrize("header", [None, "", "1800", "Second-", "Second-1e9"])
def test_a_timeout_that_is_not_second_n_is_refused(header: str | None) -> None:
    with pytest.raises(Invalid):
        granted_seconds(header)


DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><deviceList><device><deviceList><device>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL>
</service></serviceList></device></deviceList></device></deviceList></device></root>"""


def test_the_event_url_comes_from_the_wanipconnection_service() -> None:
    url = event_url(DESCRIPTION, "http://192.0.2.1:5000/rootDesc.xml")
    assert url == "http://192.0.2.1:5000/evt/IPConn"


def test_a_description_without_wan_connection_service_is_refused() -> None:
    other = DESCRIPTION.replace(b"WANIPConnection", b"Layer3Forwarding")
    with pytest.raises(Invalid, match="no WANIPConnection"):
        event_url(other, "http://192.0.2.1:5000/rootDesc.xml")


def test_debounce_gives_the_first_round_now_then_one_per_spacing() -> None:
    debounce = Debounce()
    assert debounce.delay(100.0, 2.0) == 0.0
    assert debounce.delay(100.5, 2.0) == pytest.approx(1.5)  # the next free slot
    assert debounce.delay(101.0, 2.0) is None  # already coming at 102
    assert debounce.delay(102.1, 2.0) == pytest.approx(1.9)
    assert debounce.delay(110.0, 2.0) == 0.0


def test_a_flood_of_hints_leaves_one_byte_and_a_counter() -> None:
    pushes = Pushes()
    try:
        for number in range(100_000):
            pushes._hint(f"hint {number}")
        # One byte waits on the wakeup socket, however many hints came.
        assert pushes._reader.recv(64, socket.MSG_PEEK) == b"!"
        news = pushes.take()
        assert (news.hints, news.reason, news.status_changed) == (100_000, "hint 99999", False)
        assert pushes.take().hints == 0
        pushes._changed()
        assert pushes.take().status_changed
    finally:
        pushes.close()


def test_status_warns_about_a_failing_channel_and_shows_each_one() -> None:
    from ipwatch import status

    channels = {
        "upnp-1": {
            "kind": "upnp",
            "state": "failing",
            "failures": 3,
            "last_error": "SUBSCRIBE answered 500",
        },
        "natpmp-1": {
            "kind": "natpmp",
            "state": "listening",
            "detail": "224.0.0.1:5350 on 192.0.2.2, from 192.0.2.1",
            "events": 2,
            "last_event": "announced 198.51.102.20 (epoch 0)",
            "last_event_at": "2026-12-05T07:46:01Z",
        },
    }
    daemon = {"pid": os.getpid(), "heartbeat": "2099-01-01T00:00:00Z"}
    state = {"daemon": daemon, "push": channels}
    result = status.evaluate(state, "/var/lib/ipwatch")
    assert result["status"] == "WARNING"
    assert result["push"] == channels
    assert any("push upnp-1 (upnp) failing 3 times" in p for p in result["problems"])
    text = status.format_status(result)
    assert "push natpmp-1 (natpmp): listening 224.0.0.1:5350 on 192.0.2.2" in text
    assert "2 events, last at 2026-12-05T07:46:01Z: announced 198.51.102.20" in text

    # A stopped daemon's channels are stopped too: no warning about them.
    stopped = {**state, "daemon": {**daemon, "stopped": "2026-12-05T08:00:00Z"}}
    assert not any("push" in p for p in status.evaluate(stopped, "/x")["problems"])


@pytest.mark.parametrize(
    "options",
    [
        natpmp.Options(push=False),
        upnp.Options(push=False),
        interface.Options(interface="ppp0", push=False),
    ],
)
def test_push_false_means_no_channel(options: Any) -> None:
    module = {natpmp.Options: natpmp, upnp.Options: upnp, interface.Options: interface}
    channel = module[type(options)].push_channel(options, "x", print, lambda: None)
    assert channel is None


def test_push_is_on_by_default() -> None:
    assert natpmp.Options().push and upnp.Options().push
    assert interface.Options(interface="ppp0").push
