"""Fixtures for real peers live in tests/peers/, one module per server."""

pytest_plugins = [
    "tests.peers.coturn",
    "tests.peers.bind9",
    "tests.peers.http",
    "tests.peers.asterisk",
]
