"""A config that sets every key of the schema to a valid value: the seed the fuzz targets mutate
and the table the fault suite's wrong-type cases are drawn from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EVERY_KEY: dict[str, Any] = {
    "interval": "30s",
    "confirm": 2,
    "fast_confirm": "2s",
    "quorum": "majority",
    "families": ["ipv4", "ipv6"],
    "accept": ["198.51.100.0/24"],
    "source": [
        {
            "kind": "stun",
            "name": "stun-a",
            "timeout": "2s",
            "servers": ["127.0.0.1:3478", "[::1]:3478"],
            "rto": "500ms",
            "retransmits": 6,
            "fingerprint": True,
        },
        {"kind": "dns", "hostname": "pbx.example.org", "nameservers": ["127.0.0.1:53"]},
        {"kind": "dns-echo", "provider": "opendns"},
        {
            "kind": "dns-echo",
            "name": "echo-explicit",
            "server": "127.0.0.1:53",
            "qname": "myip.example.org",
            "rdtype": "TXT",
            "rdclass": "IN",
        },
        {"kind": "http", "url": "http://127.0.0.1:8080/ip", "max_bytes": 4096},
        {"kind": "interface", "interface": "lo"},
        {"kind": "natpmp", "gateway": "192.0.2.1", "port": 5351},
        {"kind": "upnp", "url": "http://127.0.0.1:5000/rootDesc.xml", "discover_timeout": "1s"},
        {"kind": "upnp", "name": "upnp-lo", "interface": "lo"},
        {"kind": "command", "argv": ["echo", "203.0.113.7"], "max_bytes": 100},
    ],
    "target": [
        {
            "kind": "pjsip",
            "file": "/etc/asterisk/pjsip.conf",
            "name": "pjsip",
            "transports": ["transport-udp"],
            "signaling": True,
            "media": True,
        },
        {"kind": "chan_sip", "file": "/etc/asterisk/sip.conf"},
    ],
    "asterisk": {
        "control": "ami",
        "apply": "auto",
        "drain": "15m",
        "verify": True,
        "ami": {
            "host": "127.0.0.1",
            "port": 5038,
            "username": "ipwatch",
            "secret_file": "/etc/ipwatch/ami.secret",
        },
        "console_socket": "/var/run/asterisk/asterisk.ctl",
    },
    "hooks": {"dir": "/etc/ipwatch/hooks.d", "timeout": "30s"},
    "ddns": [
        {
            "kind": "rfc2136",
            "name": "rfc",
            "timeout": "10s",
            "min_interval": "5m",
            "server": "127.0.0.1:53",
            "zone": "example.org",
            "hostname": "pbx.example.org",
            "tsig_name": "ipwatch-key",
            "tsig_secret_file": "/etc/ipwatch/tsig.secret",
            "tsig_algorithm": "hmac-sha256",
            "ttl": 60,
        },
        {
            "kind": "dyndns2",
            "url": "https://members.example.org/nic/update",
            "hostname": "pbx.example.org",
            "username": "pbx",
            "password_file": "/etc/ipwatch/dyndns.secret",
        },
        {
            "kind": "cloudflare",
            "zone": "example.org",
            "record": "pbx.example.org",
            "token_file": "/etc/ipwatch/cf.secret",
            "api_url": "https://api.cloudflare.com/client/v4",
        },
        {
            "kind": "duckdns",
            "domains": ["pbx"],
            "token_file": "/etc/ipwatch/duck.secret",
            "url": "https://www.duckdns.org/update",
        },
    ],
}


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key path, value) of `value` below tables and arrays, in the form errors print."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else key)
        if path:
            yield path, value
    elif isinstance(value, list):
        if value and isinstance(value[0], dict | str):
            for index, item in enumerate(value):
                yield from leaves(item, f"{path}[{index}]")
        yield path, value
    else:
        yield path, value
