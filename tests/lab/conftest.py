"""Fixtures for the NAT lab (tests/lab/lab.py): every test gets labs of its own, torn down after
it whatever happens (the ExitStack closes each lab even when the test or another lab fails)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.lab import PUBLIC_ADDRESS, Lab

OpenLab = Callable[..., Lab]


@pytest.fixture
def open_lab(tmp_path: Path) -> Iterator[OpenLab]:
    """Call `open_lab()`, `open_lab(cgnat=True)` or `open_lab(public_address=...)` for a freshly
    built lab, nothing running."""
    numbers = itertools.count(1)
    with contextlib.ExitStack() as labs:

        def open_one(*, cgnat: bool = False, public_address: str = PUBLIC_ADDRESS) -> Lab:
            directory = tmp_path / f"lab{next(numbers)}"
            directory.mkdir()
            return labs.enter_context(
                Lab.open(directory, cgnat=cgnat, public_address=public_address)
            )

        yield open_one


@pytest.fixture
def lab(open_lab: OpenLab) -> Lab:
    """A plain NAT lab with nothing running in it yet."""
    return open_lab()


@pytest.fixture
def router_lab(open_lab: OpenLab) -> Lab:
    """The NAT lab with coturn on the "Internet" and miniupnpd on the router, which learns the
    public address by STUN from that coturn."""
    lab = open_lab()
    lab.start_coturn()
    lab.start_miniupnpd(stun=True)
    return lab
