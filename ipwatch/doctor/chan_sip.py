"""Checks of chan_sip behind NAT: [general] localnet and nat, and qualify for the peers that
register. Pure. A peer inherits [general]'s nat and qualify unless it (or a template) sets them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ipwatch.asterisk.conf import Section, Tree
from ipwatch.doctor.findings import Finding, Fix, Outcome
from ipwatch.doctor.fixes import describe
from ipwatch.doctor.network import Network, bind_port, is_private, lan_subnet, used_address
from ipwatch.doctor.pjsip import QUALIFY_MAX, QUALIFY_MESSAGE, truth
from ipwatch.doctor.sections import Sections, Value

EXTERN = ("externaddr", "externip", "externhost")
NAT = "force_rport,comedia"
_NAT_MESSAGE = (
    "without force_rport and comedia chan_sip answers at the port and sends audio to the address"
    " the phone wrote, which its NAT does not forward: lost replies and one-way audio"
)


def read(tree: Tree) -> Sections:
    return Sections(tree)


def audit(sections: Sections, network: Network) -> tuple[Outcome, int | None]:
    """The findings and fixes, and chan_sip's SIP port (UDP) when it is behind NAT."""
    general = [s for s in sections.tree.find_sections("general") if not s.template]
    if not general:
        return Outcome(), None
    first = next(s for s in general if not s.append)
    extern = [v for key in EXTERN if (v := sections.value(first, key)) and v.text]
    bind = sections.value(first, "udpbindaddr") or sections.value(first, "bindaddr")
    address = used_address(bind.text if bind else None, network)
    if not extern:
        public = network.public.get("ipv4")
        if not (address and public and address != public and is_private(address, network.accept)):
            return Outcome(), None  # not behind NAT, as far as can be seen
        return Outcome(
            (
                Finding(
                    "error",
                    "no-external-address",
                    first.path,
                    first.line,
                    "chan_sip [general]",
                    f"chan_sip writes its private address {address} into SIP and SDP, which"
                    " phones and providers outside cannot reach: one-way audio and failed"
                    " incoming calls",
                    f"set `externaddr = {public}` in [general], and a chan_sip [[target]] so"
                    " that ipwatch keeps it right",
                ),
            )
        ), bind_port(bind.text if bind else None, "udp")
    found = _localnet(sections, first, extern[0], address, network) + _nat(sections, first)
    return found + _qualify(sections, first), bind_port(bind.text if bind else None, "udp")


def _localnet(
    sections: Sections, general: Section, extern: Value, address: str | None, network: Network
) -> Outcome:
    if sections.values(general, "localnet"):
        return Outcome()
    subnet = lan_subnet(network.routes, address) if address else None
    fix = Fix(general.path, general, "localnet", subnet or "<your LAN, e.g. 192.168.1.0/24>")
    finding = Finding(
        "error",
        "chan-sip-localnet",
        extern.source.option.path,
        extern.source.option.line,
        "chan_sip [general]",
        "without localnet chan_sip takes every peer for an outside one and gives LAN phones the"
        " public address too: their calls have no audio unless the router loops traffic back",
        describe(sections.tree, fix),
    )
    return Outcome((finding,), (fix,) if subnet else ())


def _nat_ok(value: str) -> bool:
    tokens = {t.strip().lower() for t in value.split(",")}
    if "yes" in tokens:  # the pre-1.8 spelling of force_rport,comedia, still accepted
        return True
    rport = bool(tokens & {"force_rport", "auto_force_rport"})
    return rport and bool(tokens & {"comedia", "auto_comedia"})


def _nat(sections: Sections, general: Section) -> Outcome:
    # chan_sip's default is nat = force_rport (sip.conf.sample): comedia is missing.
    value = sections.value(general, "nat")
    findings: list[Finding] = []
    fixes: list[Fix] = []
    if value is None or not _nat_ok(value.text):
        _general_finding(
            "chan-sip-nat", "nat", NAT, _NAT_MESSAGE, value, general, sections, findings, fixes
        )
    for peer, own in _peer_values(sections, "nat"):
        if not _nat_ok(own.text):
            fix = Fix(own.owner.path, own.owner, "nat", NAT, own.source.option)
            findings.append(_peer_finding("chan-sip-nat", peer, own, _NAT_MESSAGE, fix, sections))
            fixes.append(fix)
    return Outcome(tuple(findings), tuple(fixes))


def _general_finding(
    code: str,
    key: str,
    wanted: str,
    message: str,
    value: Value | None,
    general: Section,
    sections: Sections,
    findings: list[Finding],
    fixes: list[Fix],
) -> None:
    """A [general] `key` that is missing or wrong: the finding where it is (or the section
    header), and the fix that sets it to `wanted`."""
    where = value.source.option if value else None
    fix = Fix(general.path, general, key, wanted, where)
    findings.append(
        Finding(
            "warning",
            code,
            where.path if where else general.path,
            where.line if where else general.line,
            "chan_sip [general]",
            message + (f" ({key} = {value.text})" if value else f" ({key} not set)"),
            describe(sections.tree, fix),
        )
    )
    fixes.append(fix)


def _qualify(sections: Sections, general: Section) -> Outcome:
    findings: list[Finding] = []
    fixes: list[Fix] = []
    value = sections.value(general, "qualify")
    frequency = sections.value(general, "qualifyfreq")
    if value is None or not _qualifies(value.text):
        _general_finding(
            "chan-sip-qualify",
            "qualify",
            "yes",
            QUALIFY_MESSAGE,
            value,
            general,
            sections,
            findings,
            fixes,
        )
    if frequency is not None and _seconds(frequency.text) > QUALIFY_MAX:
        fix = Fix(general.path, general, "qualifyfreq", str(QUALIFY_MAX), frequency.source.option)
        findings.append(
            Finding(
                "warning",
                "chan-sip-qualify",
                frequency.source.option.path,
                frequency.source.option.line,
                "chan_sip [general]",
                QUALIFY_MESSAGE + f" (qualifyfreq = {frequency.text} s)",
                describe(sections.tree, fix),
            )
        )
        fixes.append(fix)
    for peer, own in _peer_values(sections, "qualify"):
        host = sections.value(peer, "host")
        if host is not None and host.text.lower() == "dynamic" and not _qualifies(own.text):
            fix = Fix(own.owner.path, own.owner, "qualify", "yes", own.source.option)
            findings.append(
                _peer_finding("chan-sip-qualify", peer, own, QUALIFY_MESSAGE, fix, sections)
            )
            fixes.append(fix)
    return Outcome(tuple(findings), tuple(fixes))


def _seconds(text: str) -> int:
    return int(text.strip()) if text.strip().isdigit() else 0


def _qualifies(value: str) -> bool:
    # qualify = yes, or the longest round trip in ms allowed.
    text = value.strip()
    return truth(text) or (text.isdigit() and int(text) > 0)


def _peer_values(sections: Sections, key: str) -> Iterable[tuple[Section, Value]]:
    """Peers (every section but [general]) that set `key` themselves or through a template."""
    seen: set[Section] = set()
    for peer in (*sections.setting(key), *sections.inheriting):
        if peer in seen or peer.template or peer.append or peer.name.lower() == "general":
            continue
        seen.add(peer)
        value = sections.value(peer, key)
        if value is not None:
            yield peer, value


def _peer_finding(
    code: str, peer: Section, value: Value, message: str, fix: Fix, sections: Sections
) -> Finding:
    option = value.source.option
    name = f"peer {peer.name}"
    if value.owner != peer:
        name += f" (from template {value.owner.name})"
    return Finding(
        "warning",
        code,
        option.path,
        option.line,
        name,
        f"{message} ({value.source.option.key} = {value.text})",
        describe(sections.tree, fix),
    )
