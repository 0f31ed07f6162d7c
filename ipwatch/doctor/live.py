"""What a running Asterisk shows against what the files say. Pure: the commands to send, and a
comparison of their output, which gather.py collects.

The endpoints are a bounded sample, pjsip.LIVE_SAMPLE of those on a NAT transport in file order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ipwatch.asterisk.conf import Section
from ipwatch.doctor.findings import Finding, Outcome
from ipwatch.doctor.pjsip import Audit, truth

_ROW = re.compile(r"^\s*(\S+)\s+:\s?(.*?)\s*$", re.MULTILINE)
# No such object, or no res_pjsip loaded at all (the command does not exist then).
_MISSING = ("Unable to find object", "No such command")
RELOAD = (
    "run `module reload res_pjsip.so` in the Asterisk CLI; if Asterisk still shows the old"
    " value, its log says why it rejected the file"
)


def commands(audit: Audit) -> list[str]:
    """The CLI commands whose output `compare` needs."""
    return [f"pjsip show transport {t.section.name}" for t in audit.transports] + [
        f"pjsip show endpoint {e.section.name}" for e in audit.endpoints
    ]


def compare(audit: Audit, answers: Mapping[str, str]) -> Outcome:
    """`asterisk-differs` for each object whose running values are not the files' ones."""
    findings: list[Finding] = []
    for transport in audit.transports:
        shown = _shown(answers.get(f"pjsip show transport {transport.section.name}"))
        if shown is None:
            findings.append(_absent("transport", transport.section))
            continue
        for key, value in transport.external.items():
            if shown.get(key, "") != value:
                findings.append(
                    _differs("transport", transport.section, key, shown.get(key), value)
                )
        net = _network(shown.get("local_net", ""))
        written = [n for n in map(_network, transport.local_net) if n is not None]
        if written and net not in written:
            findings.append(
                _differs(
                    "transport",
                    transport.section,
                    "local_net",
                    shown.get("local_net"),
                    ", ".join(transport.local_net),
                )
            )
    for endpoint in audit.endpoints:
        shown = _shown(answers.get(f"pjsip show endpoint {endpoint.section.name}"))
        if shown is None:
            findings.append(_absent("endpoint", endpoint.section))
            continue
        for key, wanted in endpoint.expected.items():
            runs = shown.get(key)
            if runs is not None and truth(runs) != wanted:
                findings.append(
                    _differs("endpoint", endpoint.section, key, runs, "yes" if wanted else "no")
                )
    return Outcome(tuple(findings))


def _shown(output: str | None) -> dict[str, str] | None:
    """The ` name : value` rows of a show command; None when Asterisk has no such object."""
    if output is None or any(marker in output for marker in _MISSING):
        return None
    return {key.lower(): value for key, value in _ROW.findall(output)}


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A local_net as the files write it ("192.168.1.0/24") or Asterisk shows it
    ("192.168.1.0/255.255.255.0")."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _absent(kind: str, section: Section) -> Finding:
    return Finding(
        "warning",
        "asterisk-differs",
        section.path,
        section.line,
        f"{kind} {section.name}",
        f"Asterisk runs no {kind} {section.name} although the files define it: it has not"
        " read them since, or rejected the section, so calls use what it runs",
        RELOAD,
    )


def _differs(kind: str, section: Section, key: str, running: str | None, written: str) -> Finding:
    return Finding(
        "warning",
        "asterisk-differs",
        section.path,
        section.line,
        f"{kind} {section.name}",
        f"Asterisk runs {key} = {running or '(nothing)'} while the files say {written}: calls"
        " use what Asterisk runs until it reads the files again",
        RELOAD,
    )
