"""Fixtures for real peers live in tests/peers/, one module per server."""

pytest_plugins = [
    "tests.peers.coturn",
    "tests.peers.bind9",
    "tests.peers.knot",
    "tests.peers.ddns_http",
    "tests.peers.http",
    "tests.peers.stand_in",
    "tests.peers.real_asterisk",
    "tests.peers.sip_probe",
    "tests.peers.notify",
]
