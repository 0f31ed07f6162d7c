"""Checks of PJSIP's transports, endpoints and AORs behind NAT. Pure.

A transport is behind NAT when it sets an `external_*` address, or when it sends from a private
address while the public address is another one (`no-external-address`). The endpoints on such a
transport — naming it, or naming none, so that Asterisk may pick it — get the endpoint checks.
A value that comes from a template is reported once, at the template, naming the endpoints it
feeds; a missing value is fixed in the last template the endpoint inherits, or else in the
endpoint itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ipwatch.asterisk.conf import Option, Section, Tree
from ipwatch.doctor.findings import Finding, Fix, Outcome, Severity
from ipwatch.doctor.fixes import describe
from ipwatch.doctor.network import (
    Network,
    bind_port,
    is_address,
    is_private,
    lan_subnet,
    used_address,
)
from ipwatch.doctor.sections import Sections, Value

EXTERNAL = ("external_media_address", "external_signaling_address")
KINDS = ("transport", "endpoint")
# Routers forget an idle UDP mapping after 30 s to a few minutes; FreePBX qualifies every 60 s.
QUALIFY_MAX = 60
# How many endpoints are compared with what Asterisk runs: one `pjsip show endpoint` costs a few
# milliseconds, and a reload that did not happen shows in the first endpoint as in the last.
LIVE_SAMPLE = 10
# Which endpoints a check is for: all on a NAT transport, those that talk to the outside (they
# register, or have a static contact), or those that register.
Scope = Literal["all", "outside", "registering"]
# main/utils.c ast_true().
_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})
# How many endpoints a finding about a template names before "and N more".
_NAMED = 5


@dataclass(frozen=True)
class EndpointCheck:
    """One endpoint option that NAT needs: `key` must be `wanted` (the default is `default`)."""

    code: str
    key: str
    wanted: bool
    default: bool
    message: str
    scope: Scope


ENDPOINT_CHECKS = (
    EndpointCheck(
        "direct-media",
        "direct_media",
        False,
        True,
        "Asterisk tells the phones of a call to send audio straight to each other, to addresses"
        " that do not reach across NAT: the call connects with no or one-way audio",
        "all",
    ),
    EndpointCheck(
        "rtp-symmetric",
        "rtp_symmetric",
        True,
        False,
        "Asterisk sends audio to the private address in the phone's SDP instead of where the"
        " phone's audio comes from: one-way audio",
        "outside",
    ),
    EndpointCheck(
        "force-rport",
        "force_rport",
        True,
        True,
        "Asterisk answers at the port the phone wrote in its Via header, not at the one its NAT"
        " uses: replies are lost and registrations and calls fail",
        "outside",
    ),
    EndpointCheck(
        "rewrite-contact",
        "rewrite_contact",
        True,
        False,
        "Asterisk keeps the private Contact address the phone registers and sends incoming calls"
        " there, where they never arrive",
        "registering",
    ),
)
QUALIFY_MESSAGE = (
    "nothing reaches the phone between calls, so its router drops the NAT mapping and incoming"
    " calls stop reaching it until it registers again"
)


@dataclass(frozen=True)
class Context:
    """What the PJSIP checks need besides the files."""

    network: Network
    dnsmgr: bool


@dataclass(frozen=True)
class Transport:
    section: Section
    external: Mapping[str, str]  # key -> value, where set
    local_net: tuple[str, ...]
    port: int  # the SIP port
    protocol: str  # "UDP" or "TCP", as a router's port mapping says


@dataclass(frozen=True)
class Endpoint:
    section: Section
    expected: Mapping[str, bool]  # what Asterisk should show for the checked options


@dataclass(frozen=True)
class Audit:
    """The findings and fixes, and what to compare with a running Asterisk."""

    outcome: Outcome
    transports: tuple[Transport, ...]  # the ones behind NAT
    endpoints: tuple[Endpoint, ...]  # the first LIVE_SAMPLE ones on them, in file order


def read(tree: Tree) -> Sections:
    return Sections(tree, KINDS)


def audit(sections: Sections, context: Context) -> Audit:
    headers: list[Finding] = []
    issues: list[_Issue] = []
    nat: list[Transport] = []
    transports = sections.typed("transport")
    for section in transports:
        found, missing, behind = _transport(sections, section, context)
        issues += found
        headers += [missing] if missing else []
        if behind:
            nat.append(_transport_values(sections, section))
    outcome = Outcome(tuple(headers)) + _transport_findings(issues)
    on_nat = _on(sections, nat, len(transports))
    aors = _contact_aors(sections)
    reach = [(e, _reaches_out(sections, e, aors)) for e in on_nat]
    scopes: dict[Scope, list[Section]] = {
        "all": on_nat,
        "outside": [e for e, how in reach if how != "no"],
        "registering": [e for e, how in reach if how == "registers"],
    }
    for check in ENDPOINT_CHECKS:
        outcome += _grouped_check(sections, scopes[check.scope], check)
    outcome += _qualify(sections, scopes["outside"], aors)
    endpoints = tuple(Endpoint(e, _expected(sections, e)) for e in on_nat[:LIVE_SAMPLE])
    return Audit(outcome, tuple(nat), endpoints)


def _on(sections: Sections, nat: list[Transport], transports: int) -> list[Section]:
    """The endpoints on a NAT transport: naming one, or naming none (Asterisk then picks one
    that fits). When every transport is behind NAT, all endpoints are, and reading each
    endpoint's `transport` line (a tenth of a second for 10,000) can be spared."""
    endpoints = sections.typed("endpoint")
    if not nat or len(nat) == transports:
        return endpoints if nat else []
    names = {t.section.name for t in nat}
    return [
        e for e in endpoints if (v := sections.value(e, "transport")) is None or v.text in names
    ]


# --- transports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issue:
    """A problem of one transport at one option line, which templates may share."""

    code: str
    severity: Severity
    value: Value
    transport: Section
    message: str
    fix: str
    edit: Fix | None


def _transport(
    sections: Sections, section: Section, context: Context
) -> tuple[list[_Issue], Finding | None, bool]:
    """The transport's problems at option lines, the one at its header, and whether it is
    behind NAT."""
    external = [v for key in EXTERNAL if (v := sections.value(section, key)) and v.text]
    bind = sections.value(section, "bind")
    address = used_address(bind.text if bind else None, context.network)
    if not external:
        public = context.network.public.get("ipv6" if address and ":" in address else "ipv4")
        if not (address and public and address != public):
            return [], None, False
        if not is_private(address, context.network.accept):
            return [], None, False
        missing = _at_header(
            "error",
            "no-external-address",
            section,
            f"transport {section.name}",
            f"Asterisk writes its private address {address} into SIP and SDP, which phones and"
            " providers outside cannot reach: one-way audio and failed incoming calls",
            f"add `external_media_address = {public}` and `external_signaling_address ="
            f" {public}` to [{section.name}], and a pjsip [[target]] so that ipwatch keeps"
            " them right",
        )
        return [], missing, True
    issues = []
    if not sections.values(section, "local_net"):
        owner = external[0].owner
        subnet = lan_subnet(context.network.routes, address) if address else None
        lan = subnet or "<your LAN, e.g. 192.168.1.0/24>"
        fix = Fix(owner.path, owner, "local_net", lan, kind="transport")
        unknown = "" if subnet else ", the subnet of the interface of the bind address"
        issues.append(
            _Issue(
                "no-local-net",
                "error",
                external[0],
                section,
                "without local_net Asterisk takes every peer for an outside one and gives LAN"
                " phones the public address too: their calls have no audio unless the router"
                " loops traffic back",
                describe(sections.tree, fix) + unknown,
                fix if subnet else None,
            )
        )
    names = [v for v in external if not is_address(v.text)]
    if names and not context.dnsmgr:
        name = names[0].text
        issues.append(
            _Issue(
                "hostname-without-dnsmgr",
                "warning",
                names[0],
                section,
                f"dnsmgr is off, so Asterisk resolves {name} only when it loads pjsip.conf and"
                " keeps the old address after the public one changes: calls fail until the"
                " next reload",
                "set `enable = yes` in [general] of dnsmgr.conf and run `module reload dnsmgr`,"
                f" or write the address instead of {name} and let ipwatch keep it right",
                None,
            )
        )
    return issues, None, True


def _transport_findings(issues: list[_Issue]) -> Outcome:
    """One finding per option line: a template that several transports share is named once."""
    groups: dict[tuple[str, str, int], list[_Issue]] = defaultdict(list)
    for issue in issues:
        option = issue.value.source.option
        groups[issue.code, option.path, option.line].append(issue)
    findings = []
    fixes = []
    for group in groups.values():
        first = group[0]
        owner = first.value.owner
        if len(group) == 1 and owner == first.transport:
            label = f"transport {owner.name}"
        else:
            names = ", ".join(issue.transport.name for issue in group)
            label = f"template {owner.name} (transports {names})"
        findings.append(
            _at_option(first.severity, first.code, first.value, label, first.message, first.fix)
        )
        if first.edit is not None:
            fixes.append(first.edit)
    return Outcome(tuple(findings), tuple(fixes))


def _transport_values(sections: Sections, section: Section) -> Transport:
    external = {k: v.text for k in EXTERNAL if (v := sections.value(section, k)) and v.text}
    nets = tuple(v.text for v in sections.values(section, "local_net"))
    bind = sections.value(section, "bind")
    protocol = sections.value(section, "protocol")
    kind = protocol.text.lower() if protocol else "udp"
    port = bind_port(bind.text if bind else None, kind)
    return Transport(section, external, nets, port, "UDP" if kind == "udp" else "TCP")


# --- endpoints and AORs --------------------------------------------------------------------


def _reaches_out(
    sections: Sections, endpoint: Section, aors: Mapping[str, Section]
) -> Literal["registers", "static", "no"]:
    """Whether the endpoint registers (an AOR that takes contacts), has a static contact, or
    neither. From the files a LAN phone cannot be told from a remote one, and the NAT options
    are harmless on the LAN, so every such endpoint on a NAT transport counts."""
    found: Literal["registers", "static", "no"] = "no"
    for aor in _aors_of(sections, endpoint, aors):
        if _integer(sections.value(aor, "max_contacts"), 0) > 0:
            return "registers"
        if sections.value(aor, "contact") is not None:
            found = "static"
    return found


def _contact_aors(sections: Sections) -> dict[str, Section]:
    """The AORs that take registrations or have a static contact, by name: only AORs have
    `max_contacts` and `contact` lines, so these need no search of `type = aor` (a tenth of a
    second for 10,000), and other AORs reach no phone the NAT checks are about."""
    found: dict[str, Section] = {}
    for key in ("max_contacts", "contact"):
        for section in (*sections.setting(key), *sections.inheriting):
            if section.template or section.append or section.name in found:
                continue
            if sections.value(section, key) is not None:
                found[section.name] = section
    return found


def _aors_of(sections: Sections, endpoint: Section, aors: Mapping[str, Section]) -> list[Section]:
    value = sections.value(endpoint, "aors")
    names = [n.strip() for n in value.text.split(",")] if value else []
    return [aors[n] for n in names if n in aors]


def _grouped_check(sections: Sections, scope: Iterable[Section], check: EndpointCheck) -> Outcome:
    wanted = "yes" if check.wanted else "no"
    groups: dict[tuple[Section, int | None], list[tuple[Section, Value | None]]] = defaultdict(list)
    for endpoint in scope:
        value = sections.value(endpoint, check.key)
        if _truth(value, check.default) == check.wanted:
            continue
        owner = value.owner if value else (sections.chain(endpoint) or (endpoint,))[-1]
        groups[owner, value.source.option.line if value else None].append((endpoint, value))
    return _report(sections, groups, check.code, check.key, wanted, check.message, "endpoint")


def _qualify(
    sections: Sections, endpoints: Iterable[Section], aors: Mapping[str, Section]
) -> Outcome:
    groups: dict[tuple[Section, int | None], list[tuple[Section, Value | None]]] = defaultdict(list)
    seen: set[Section] = set()
    for endpoint in endpoints:
        for aor in _aors_of(sections, endpoint, aors):
            if aor in seen:
                continue
            seen.add(aor)
            value = sections.value(aor, "qualify_frequency")
            if 0 < _integer(value, 0) <= QUALIFY_MAX:
                continue
            owner = value.owner if value else (sections.chain(aor) or (aor,))[-1]
            groups[owner, value.source.option.line if value else None].append((aor, value))
    return _report(
        sections, groups, "qualify", "qualify_frequency", str(QUALIFY_MAX), QUALIFY_MESSAGE, "aor"
    )


def _report(
    sections: Sections,
    groups: Mapping[tuple[Section, int | None], list[tuple[Section, Value | None]]],
    code: str,
    key: str,
    wanted: str,
    message: str,
    kind: str,
) -> Outcome:
    findings: list[Finding] = []
    fixes: list[Fix] = []
    for (owner, _), members in groups.items():
        value = members[0][1]
        option = value.source.option if value else None
        fix = Fix(owner.path, owner, key, wanted, option, kind)
        fixes.append(fix)
        names = [member.name for member, _ in members]
        if len(members) == 1 and members[0][0] == owner:
            label = f"{kind} {owner.name}"
        else:
            more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
            label = f"template {owner.name} ({kind}s {', '.join(names[:_NAMED])}{more})"
        said = f" ({key} = {value.text})" if value else f" ({key} not set)"
        where = describe(sections.tree, fix)
        if value is not None:
            findings.append(_at_option("warning", code, value, label, message + said, where))
        else:
            findings.append(_at_header("warning", code, owner, label, message + said, where))
    return Outcome(tuple(findings), tuple(fixes))


def _expected(sections: Sections, endpoint: Section) -> dict[str, bool]:
    return {
        check.key: _truth(sections.value(endpoint, check.key), check.default)
        for check in ENDPOINT_CHECKS
    }


# --- shared --------------------------------------------------------------------------------


def truth(text: str) -> bool:
    """How Asterisk reads a yes/no option: sorcery's and dnsmgr's ast_true(), so that a word it
    does not know (or nothing) is no, not the default."""
    return text.strip().lower() in _TRUE


def _truth(value: Value | None, default: bool) -> bool:
    """A yes/no option's value, or its default when nothing sets it."""
    return default if value is None else truth(value.text)


def _integer(value: Value | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value.text.strip())
    except ValueError:
        return default


def _named(name: str, owner: Section, section: Section) -> str:
    return name if owner == section else f"{name} (from template {owner.name})"


def _at_option(
    severity: Severity, code: str, value: Value, name: str, message: str, fix: str
) -> Finding:
    option: Option = value.source.option
    return Finding(severity, code, option.path, option.line, name, message, fix)


def _at_header(
    severity: Severity, code: str, section: Section, name: str, message: str, fix: str
) -> Finding:
    return Finding(severity, code, section.path, section.line, name, message, fix)
