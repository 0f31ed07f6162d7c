"""The Asterisk config model: any file round-trips, and planning a new address changes only the
external_* values (or adds such lines), leaving every other byte as it was.

Files are pjsip.conf-like soup: transports, templates, comments (block ones too), CRLF, odd
bytes. The edited file must parse back to the same bytes, plan again to no edit, and differ
from the original only in lines that carry the managed keys.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from ipwatch.asterisk.conf import Document, load_tree
from ipwatch.asterisk.targets import MEDIA, SIGNALING, plan_target
from ipwatch.config import TargetConfig
from ipwatch.errors import ConfFileError
from tests.fuzz import fuzz

LINES = [
    "[transport-udp]",
    "[transport-tcp](!)",
    "[nat](transport-tcp)",
    "[general]",
    "type=transport",
    "type = transport",
    "protocol=udp",
    "bind=0.0.0.0:5060",
    "bind=[::]:5060",
    "external_media_address=198.51.100.5",
    "external_signaling_address = 198.51.100.5 ; old",
    "external_signaling_port=5060",
    "externaddr=198.51.100.5",
    "local_net=192.168.0.0/16",
    "; a comment",
    ";-- block",
    "--;",
    "#include other.conf",
    "#exec /bin/true",
    "\\;x=1",
    "",
]
known = st.sampled_from(LINES)
lines = st.one_of(
    known,
    known,
    known,
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=20),
)
files = st.builds(
    lambda head, body, newline: newline.join(head + body) + newline,
    st.sampled_from([[], ["[transport-udp]", "type=transport", "external_media_address=1.2.3.4"]]),
    st.lists(lines, max_size=25),
    st.sampled_from(["\n", "\r\n"]),
)
MANAGED = (SIGNALING, MEDIA, "externaddr", "externip")


def unmanaged(lines: list[str]) -> list[str]:
    return [line for line in lines if not any(key in line.lower() for key in MANAGED)]


@fuzz
@given(files | st.binary(max_size=400).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_any_file_serialises_to_its_own_bytes(text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    assert Document.parse(data, "x.conf").serialise() == data


@fuzz
@given(files, st.sampled_from(["pjsip", "chan_sip"]), st.ip_addresses(v=4))
@example("[general]\n[general]\n[general]\n", "chan_sip", "192.0.2.9")
@example("[t]\ntype=transport\nexternal_media_address=198.51.100.5\n", "pjsip", "192.0.2.9")
def test_planning_changes_only_the_managed_values(text: str, kind: str, address: object) -> None:
    with tempfile.TemporaryDirectory() as directory:
        top = Path(directory, "pjsip.conf")
        top.write_bytes(text.encode("utf-8", "surrogateescape"))
        Path(directory, "other.conf").write_text("")
        target = TargetConfig(kind=kind, file=str(top))  # type: ignore[arg-type]
        try:
            plan, documents = plan_target(target, load_tree(top), {"ipv4": str(address)})
        except ConfFileError as error:
            assert "\n" not in str(error)
            return
        if not documents:
            assert plan.in_sync
            return
        edited = documents[top].serialise()
        assert Document.parse(edited, str(top)).serialise() == edited
        old, new = text.splitlines(), edited.decode("utf-8", "surrogateescape").splitlines()
        assert unmanaged(new) == unmanaged(old)  # every other line kept, in order
        top.write_bytes(edited)
        again, _ = plan_target(target, load_tree(top), {"ipv4": str(address)})
        assert again.in_sync, again.edits
