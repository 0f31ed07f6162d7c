"""`ipwatch doctor` over the corpus in tests/data/doctor: golden findings and fixes, and what the
fixes leave behind; the pure helpers with property tests."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipwatch.config import parse
from ipwatch.doctor import findings, gather, live, network, pjsip
from ipwatch.doctor.audit import Report, examine
from ipwatch.doctor.findings import Finding

CORPUS = Path(__file__).parent.parent / "data" / "doctor"
# The network tests/data/doctor/README.md describes.
ROUTES = network.parse_routes(
    "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n"
    "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
)
BEHIND_NAT = network.Network(
    public={"ipv4": "198.51.100.7"},
    host={"ipv4": "192.168.1.10"},
    routes=ROUTES,
    accept=(ipaddress.ip_network("198.51.100.0/24"),),
)
PUBLIC = network.Network(
    public={"ipv4": "198.51.100.7"},
    host={"ipv4": "198.51.100.7"},
    routes=network.parse_routes(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\n"
        "eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
    ),
    accept=(ipaddress.ip_network("198.51.100.0/24"),),
)
CASES = {
    "hand-written": ("pjsip", BEHIND_NAT),
    "templates": ("pjsip", BEHIND_NAT),
    "includes": ("pjsip", BEHIND_NAT),
    "freepbx": ("pjsip", BEHIND_NAT),
    "chan_sip": ("chan_sip", BEHIND_NAT),
    "no-external": ("pjsip", BEHIND_NAT),
    "sane-nat": ("pjsip", BEHIND_NAT),
    "public": ("pjsip", PUBLIC),
}
# Codes whose findings the safe fixes remove (the others need the admin or the router).
FIXED_BY_PLAN = {
    "no-local-net",
    "direct-media",
    "rtp-symmetric",
    "force-rport",
    "rewrite-contact",
    "qualify",
    "chan-sip-localnet",
    "chan-sip-nat",
    "chan-sip-qualify",
}


def copy_case(case: str, tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("expected.*")
    return Path(shutil.copytree(CORPUS / case, tmp_path / case, ignore=ignore))


def files_of(directory: Path, kind: str) -> gather.Files:
    top = directory / ("sip.conf" if kind == "chan_sip" else "pjsip.conf")
    config = parse(
        {
            "source": [{"kind": "command", "argv": ["true"]}],
            "target": [{"kind": kind, "file": str(top)}],
        }
    )
    return gather.read_files(config)


def doctor(directory: Path, kind: str, known: network.Network) -> Report:
    return examine(files_of(directory, kind), known, None, plan=True)


def relative(report: Report, directory: Path) -> tuple[list[dict[str, Any]], str]:
    rows = []
    for finding in report.findings:
        row = finding.as_json()
        if row["file"]:
            row["file"] = os.path.relpath(row["file"], directory)
        rows.append(row)
    return rows, report.diff.replace(f"{directory}/", "")


@pytest.mark.parametrize("case", CASES)
def test_corpus_findings_and_fixes_match_the_golden_files(case: str, tmp_path: Path) -> None:
    directory = copy_case(case, tmp_path)
    rows, diff = relative(doctor(directory, *CASES[case]), directory)
    if os.environ.get("IPWATCH_UPDATE_GOLDEN"):
        (CORPUS / case / "expected.json").write_text(json.dumps(rows, indent=2) + "\n")
        (CORPUS / case / "expected.diff").write_text(diff)
    assert rows == json.loads((CORPUS / case / "expected.json").read_text())
    assert diff == (CORPUS / case / "expected.diff").read_text()


@pytest.mark.parametrize("case", CASES)
def test_the_planned_fixes_leave_only_what_needs_the_admin(case: str, tmp_path: Path) -> None:
    directory = copy_case(case, tmp_path)
    before = doctor(directory, *CASES[case])
    for change in before.changes:
        change.path.write_bytes(change.new)
    after = doctor(directory, *CASES[case])
    assert after.diff == ""
    left = [f for f in after.findings if f.code in FIXED_BY_PLAN]
    # Only what no safe fix exists for stays: local_net when the subnet is unknown.
    assert all("<your LAN" in f.fix for f in left), left
    assert {f.code for f in after.findings} <= {f.code for f in before.findings}


def test_a_sane_setup_behind_nat_has_only_the_rtp_note(tmp_path: Path) -> None:
    report = doctor(copy_case("sane-nat", tmp_path), *CASES["sane-nat"])
    assert [(f.code, f.severity) for f in report.findings] == [("rtp-range", "info")]
    assert "10000-20000" in report.findings[0].message
    assert findings.exit_status(report.findings) == 0


def test_a_pbx_on_a_public_address_has_no_findings(tmp_path: Path) -> None:
    report = doctor(copy_case("public", tmp_path), *CASES["public"])
    assert report.findings == () and report.diff == ""


def test_a_template_value_is_reported_once_naming_its_endpoints(tmp_path: Path) -> None:
    report = doctor(copy_case("templates", tmp_path), *CASES["templates"])
    media = [f for f in report.findings if f.code == "direct-media"]
    assert [(f.object, f.line) for f in media] == [("template phone (endpoints 300, 301)", 23)]


def test_exit_status_is_nagios_like() -> None:
    def make(severity: findings.Severity) -> Finding:
        return Finding(severity, "x", None, None, "o", "m", "f")

    assert findings.exit_status([]) == 0
    assert findings.exit_status([make("info")]) == 0
    assert findings.exit_status([make("info"), make("warning")]) == 1
    assert findings.exit_status([make("warning"), make("error"), make("info")]) == 2


def test_the_human_listing_shortens_a_long_run_of_one_code() -> None:
    many = [Finding("warning", "qualify", "p.conf", n, f"aor {n}", "m", "f") for n in range(1, 26)]
    text = findings.format_findings(many)
    assert text.count("[qualify]") == findings.SHOWN_PER_CODE + 1
    assert "... and 15 more [qualify] (--json lists all)" in text
    assert text.endswith("doctor: 0 errors, 25 warnings, 0 notes\n")


# --- the pure helpers ------------------------------------------------------------------------


@given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=30))
def test_lan_subnet_is_the_connected_network_holding_the_address(
    address: ipaddress.IPv4Address, prefix: int
) -> None:
    net = ipaddress.IPv4Network((int(address), prefix), strict=False)
    route = network.Route("eth0", net, None)
    default = network.Route("eth0", ipaddress.IPv4Network("0.0.0.0/0"), address)
    assert network.lan_subnet([default, route], str(address)) == str(net)
    via = network.Route("eth1", net, ipaddress.IPv4Address("10.0.0.1"))
    assert network.lan_subnet([default, via], str(address)) is None


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_proc_net_route_lines_read_back(address: ipaddress.IPv4Address, prefix: int) -> None:
    net = ipaddress.IPv4Network((int(address), prefix), strict=False)
    little = int.from_bytes(net.network_address.packed, "little")
    mask = int.from_bytes(net.netmask.packed, "little")
    text = f"Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nppp0\t{little:08X}"
    text += f"\t00000000\t0001\t0\t0\t0\t{mask:08X}\t0\t0\t0\n"
    assert network.parse_routes(text) == (network.Route("ppp0", net, None),)


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        (None, "0.0.0.0", 5060),
        ("0.0.0.0:5061", "0.0.0.0", 5061),
        ("192.168.1.10", "192.168.1.10", 5060),
        ("[::]:5080", "::", 5080),
        ("::", "::", 5060),
        ("[2001:db8::1]", "2001:db8::1", 5060),
    ],
)
def test_bind_values_as_pjsip_reads_them(bind: str | None, host: str, port: int) -> None:
    assert network.bind_host(bind) == host
    assert network.bind_port(bind, "udp") == port


def test_yes_words_read_as_asterisks_ast_true_reads_them() -> None:
    for word in ("yes", "YES", "true", "y", "t", "1", "on", " On "):
        assert pjsip.truth(word) is True
    # Sorcery reads a word it does not know as no (direct_media = maybe turns it off).
    for word in ("no", "False", "n", "f", "0", "off", "", "maybe", "2"):
        assert pjsip.truth(word) is False


def test_cgnat_from_the_recorded_answers() -> None:
    router = {"name": "upnp-1", "kind": "upnp", "address": None, "no_public_address": True}
    found = network.cgnat(network.Network(verdicts=(router,)))
    assert [f.code for f in found.findings] == ["cgnat"]
    assert "upnp-1 (upnp) says the router has no public address" in found.findings[0].message
    hinted = network.cgnat(network.Network(hint="ppp0 reports 100.64.1.2 while stun-1 sees X"))
    assert hinted.findings[0].message.startswith("ppp0 reports 100.64.1.2")
    assert network.cgnat(network.Network(public={"ipv4": "198.51.100.7"})).findings == ()


def test_live_values_that_differ_from_the_files_are_findings(tmp_path: Path) -> None:
    directory = copy_case("hand-written", tmp_path)
    ((_, tree),) = files_of(directory, "pjsip").trees
    audit = pjsip.audit(pjsip.read(tree), pjsip.Context(BEHIND_NAT, False))
    assert live.commands(audit) == [
        "pjsip show transport transport-udp-nat",
        "pjsip show endpoint 200",
        "pjsip show endpoint 201",
        "pjsip show endpoint provider",
    ]
    answers = {
        "pjsip show transport transport-udp-nat": " external_media_address : 198.51.100.5\n"
        " external_signaling_address : 198.51.100.7\n local_net : \n",
        "pjsip show endpoint 200": " direct_media : true\n rtp_symmetric : false\n",
        "pjsip show endpoint 201": " direct_media : true\n rtp_symmetric : true\n",
        "pjsip show endpoint provider": "Unable to find object provider.",
    }
    found = live.compare(audit, answers).findings
    assert [(f.object, f.message.split(" while")[0]) for f in found] == [
        ("transport transport-udp-nat", "Asterisk runs external_media_address = 198.51.100.5"),
        ("endpoint 201", "Asterisk runs direct_media = true"),
        (
            "endpoint provider",
            "Asterisk runs no endpoint provider although the files define it:"
            " it has not read them since, or rejected the section, so calls use what it runs",
        ),
    ]


# --- the diff of many fixes ------------------------------------------------------------------


@st.composite
def edited_pieces(draw: st.DrawFn) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """Files cut into pieces, each with lines replaced or added: what fixes.edit makes."""
    old: list[str] = []
    new: list[str] = []
    sync: list[tuple[int, int]] = []
    for piece in range(draw(st.integers(min_value=1, max_value=8))):
        sync.append((len(old), len(new)))
        size = draw(st.integers(min_value=1, max_value=12))
        lines = [f"p{piece} line {n}\n" for n in range(size)]
        old += lines
        for n, line in enumerate(lines):
            new.append(f"p{piece} changed {n}\n" if draw(st.booleans()) else line)
            new += [f"p{piece} added {n}.{k}\n" for k in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):  # a last line without a newline, as files sometimes have
        old[-1], new[-1] = old[-1].rstrip("\n"), new[-1].rstrip("\n")
    return old, new, sync


@given(edited_pieces())
def test_the_piecewise_diff_is_difflibs(
    pieces: tuple[list[str], list[str], list[tuple[int, int]]],
) -> None:
    from ipwatch.doctor.unified import Change, unified
    from ipwatch.files import FileChange
    from ipwatch.plan import Plan

    old, new, sync = pieces
    before, after = "".join(old).encode(), "".join(new).encode()
    expected = Plan((), (FileChange(Path("/x.conf"), before, after),)).diff()
    assert unified(Change(Path("/x.conf"), before, after, tuple(sync))) == expected


def test_many_fixes_are_made_piece_by_piece_as_the_whole_file_would_be(tmp_path: Path) -> None:
    from ipwatch.doctor import fixes

    endpoints = "".join(
        f"[{n}]\ntype = endpoint\ntransport = t\naors = {n}\n\n"
        f"[{n}]\ntype = aor\nmax_contacts = 1\n"
        f"{'qualify_frequency = 300' if n % 3 == 0 else ''}\n\n"
        for n in range(100, 100 + 2 * fixes._PIECEWISE)
    )
    (tmp_path / "pjsip.conf").write_text(
        "[t]\ntype = transport\nexternal_media_address = 198.51.100.7\n\n" + endpoints
    )
    report = doctor(tmp_path, "pjsip", BEHIND_NAT)
    (change,) = report.changes
    ((_, tree),) = files_of(tmp_path, "pjsip").trees
    audit = pjsip.audit(pjsip.read(tree), pjsip.Context(BEHIND_NAT, False))
    unique = {(f.file, f.section, f.key): f for f in audit.outcome.fixes}
    whole = fixes._edit_whole(tree.documents[tmp_path / "pjsip.conf"], list(unique.values()))
    assert change.new == whole.serialise()
    assert len(change.sync) > fixes._PIECEWISE


def test_router_mappings_to_us_elsewhere_and_none() -> None:
    answer = network.RouterAnswer(
        "upnp-1",
        "192.168.1.10",
        (
            network.PortMapping(5060, "UDP", "192.168.1.10", 5060, "pbx"),
            network.PortMapping(5061, "TCP", "192.168.1.20", 5061, "old pbx"),
            network.PortMapping(5062, "TCP", None, None, ""),
        ),
    )
    found = network.sip_port_mappings(answer, "192.168.1.10").findings
    assert [(f.severity, f.object) for f in found] == [
        ("info", "router UDP 5060"),
        ("warning", "router TCP 5061"),
        ("info", "router TCP 5062"),
    ]
    assert "reach that host instead of Asterisk" in found[1].message
    failed = network.sip_port_mappings(network.RouterAnswer("upnp-1", error="timed out"), None)
    assert [f.code for f in failed.findings] == ["sip-port-mapping"]
    assert "(upnp-1: timed out)" in failed.findings[0].message


def test_json_text_is_the_findings_and_exit_as_json() -> None:
    many = [Finding("warning", "qualify", "p.conf", n, f"aor {n}", 'say "x"', "f") for n in (1, 2)]
    parsed = json.loads(findings.json_text(many))
    assert parsed == {"findings": [f.as_json() for f in many], "exit": 1}
    assert json.loads(findings.json_text([], "")) == {"findings": [], "exit": 0, "diff": ""}
    rows = findings.json_text(many).splitlines()[1:3]  # one finding a line
    assert [json.loads(row.strip().rstrip(",")) for row in rows] == [f.as_json() for f in many]


def test_freepbx_fixes_go_to_a_custom_post_file_only_when_it_is_included(tmp_path: Path) -> None:
    directory = copy_case("freepbx", tmp_path)
    top = directory / "pjsip.conf"
    top.write_text(top.read_text().replace("#include pjsip.endpoint_custom_post.conf\n", ""))
    report = doctor(directory, "pjsip", BEHIND_NAT)
    (media,) = [f for f in report.findings if f.code == "direct-media"]
    assert media.fix == (
        "FreePBX rewrites pjsip.endpoint.conf: set it in FreePBX (the extension's Advanced tab,"
        " Direct Media)"
    )
    assert {change.path.name for change in report.changes} == {
        "pjsip.aor_custom_post.conf",
        "pjsip.transports_custom_post.conf",
    }


# --- templates, as config.c copies them --------------------------------------------------------

KEYS = ("direct_media", "rtp_symmetric", "qualify_frequency")


@st.composite
def templated(draw: st.DrawFn) -> tuple[str, dict[str, dict[str, str]]]:
    """A file of templates (each inheriting earlier ones) and sections inheriting them, and
    what config.c makes of each section: the templates' variables copied depth first at the
    header, then its own lines, the last one of a key winning."""
    values = st.sampled_from(["yes", "no", "30", "90"])
    text = ""
    resolved: dict[str, dict[str, str]] = {}
    names: list[str] = []
    for number in range(draw(st.integers(min_value=1, max_value=8))):
        template = draw(st.booleans()) or not names
        name = f"t{number}" if template else f"s{number}"
        parents = draw(st.lists(st.sampled_from(names), max_size=2)) if names else []
        parents = [p for p in parents if p.startswith("t")]
        entries = ",".join((["!"] if template else []) + parents)
        text += f"[{name}]" + (f"({entries})" if entries else "") + "\n"
        mine: dict[str, str] = {}
        for parent in parents:
            mine.update(resolved[parent])
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
            value = draw(values)
            text += f"{key} = {value}\n"
            mine[key] = value
        resolved[name] = mine
        names.append(name)
    return text, resolved


@given(templated())
def test_section_values_follow_templates_as_config_c_does(
    case: tuple[str, dict[str, dict[str, str]]],
) -> None:
    from ipwatch.asterisk.conf import Document, Tree, load_tree
    from ipwatch.doctor.sections import Sections

    text, resolved = case
    directory = Path(tempfile.mkdtemp(prefix="doctor-templates-"))
    try:
        (directory / "pjsip.conf").write_text(text)
        tree: Tree = load_tree(directory / "pjsip.conf")
        sections = Sections(tree)
        document: Document = tree.documents[directory / "pjsip.conf"]
        for section in document.sections:
            for key in KEYS:
                value = sections.value(section, key)
                assert (value.text if value else None) == resolved[section.name].get(key)
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize(
    ("case", "ports"),
    [
        ("chan_sip", [(5060, "UDP")]),
        ("templates", [(5060, "TCP"), (5060, "UDP")]),
        ("public", None),  # not behind NAT: the router is not asked
    ],
)
def test_the_router_is_asked_about_the_sip_ports_behind_nat(
    case: str, ports: list[tuple[int, str]] | None, tmp_path: Path
) -> None:
    asked: list[list[tuple[int, str]]] = []

    def router(wanted: Any) -> network.RouterAnswer:
        asked.append(list(wanted))
        return network.RouterAnswer("upnp-1", "192.168.1.10")

    kind, known = CASES[case]
    directory = copy_case(case, tmp_path)
    examine(files_of(directory, kind), known, None, router)
    assert asked == ([ports] if ports else [])
