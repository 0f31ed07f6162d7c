"""Ask every source once, all at the same time, and time each answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ipwatch.addresses import Family
from ipwatch.config import SourceConfig
from ipwatch.decide import Observation
from ipwatch.errors import NoPublicAddress, SourceError
from ipwatch.sources import kind_module, serves

Clock = Callable[[], float]


def ask(source: SourceConfig, family: Family, clock: Clock = time.monotonic) -> Observation:
    """Ask one source; any failure becomes the observation's error, never an exception."""
    started = clock()
    answer: str | None = None
    error: str | None = None
    no_public_address = False
    try:
        answer = kind_module(source.kind).ask(source.options, family, source.timeout)
    except SourceError as failure:
        error = str(failure)
        no_public_address = isinstance(failure, NoPublicAddress)
    except Exception as failure:  # a bug in one source must not take the round down
        error = f"internal error: {type(failure).__name__}: {failure}"
    latency_ms = round((clock() - started) * 1000, 1)
    return Observation(source.name, source.kind, answer, latency_ms, error, no_public_address)


def observe(all_sources: Sequence[SourceConfig], family: Family) -> list[Observation]:
    """Ask all sources in parallel, so a round lasts as long as the slowest source, not the sum."""
    sources = [s for s in all_sources if serves(s.kind, s.options, family)]
    if not sources:
        return []
    if len(sources) == 1:
        return [ask(sources[0], family)]
    with ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="source") as pool:
        return list(pool.map(lambda source: ask(source, family), sources))
