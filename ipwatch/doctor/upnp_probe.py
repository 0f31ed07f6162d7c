"""The process that asks the router which SIP ports it forwards over UPnP, for `ipwatch doctor`
(run by path: `python -I upnp_probe.py REQUEST`).

As for the `upnp` source (ipwatch/sources/upnp_worker.py, whose reasons apply here), miniupnpc
reads whatever a LAN device sends, so the exchange runs in a process of its own, its address
space capped, killed by doctor at the source's timeout. REQUEST is JSON: {"url", "interface",
"discover_timeout", "ports": [[port, "UDP" or "TCP"], ...]}. One JSON line goes to stdout:
{"lan": the address the router was asked from, "mappings": [[port, protocol, host or null,
internal port or null, description], ...]}, or {"error": text}. Only the standard library and
miniupnpc are imported.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

# The same headroom as the source's worker: any real router's answers many times over.
HEADROOM = 32 * 1024 * 1024


def main(argv: list[str]) -> int:
    import miniupnpc

    with open("/proc/self/statm", encoding="ascii") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    # prlimit(2), not setrlimit(2): the shipped unit's SystemCallFilter refuses the latter.
    resource.prlimit(0, resource.RLIMIT_AS, (size + HEADROOM, size + HEADROOM))
    request = json.loads(argv[1])
    try:
        answer = _ask(miniupnpc, request)
    except Exception as error:  # miniupnpc raises bare Exceptions with its own text
        answer = {"error": str(error) or type(error).__name__}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


def _ask(miniupnpc: Any, request: dict[str, Any]) -> dict[str, Any]:
    gateway = miniupnpc.UPnP(
        multicastif=request["interface"],
        discoverdelay=round(request["discover_timeout"] * 1000),
    )
    if request["url"] is not None:
        gateway.selectigd(request["url"])
    else:
        try:
            found = gateway.discover()
        except Exception:  # miniupnpc raises Exception("Success") when nobody answered
            found = 0
        if not found:
            return {"error": "no UPnP device answered discovery"}
        gateway.selectigd()
    mappings = []
    for port, protocol in request["ports"]:
        entry = gateway.getspecificportmapping(port, protocol)
        host, internal, description = (entry[0], entry[1], entry[2]) if entry else (None,) * 3
        mappings.append([port, protocol, host, internal, description])
    return {"lan": gateway.lanaddr, "mappings": mappings}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
