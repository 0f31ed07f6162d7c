"""kind = "freepbx": the address goes into FreePBX's override files, never its generated ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ipwatch import reconcile
from ipwatch.config import parse
from ipwatch.errors import ConfFileError
from ipwatch.plan import Plan

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
NEW = "198.51.100.7"
OVERRIDES = "pjsip.transports_custom_post.conf"


@pytest.fixture(name="pbx")
def pbx_fixture(tmp_path: Path) -> Path:
    shutil.copytree(
        CORPUS / "freepbx", tmp_path / "freepbx", ignore=shutil.ignore_patterns("expected.*")
    )
    return tmp_path / "freepbx"


def plan(directory: Path, **target: Any) -> Plan:
    config = parse(
        {
            "source": [{"kind": "command", "argv": ["true"]}],
            "target": [{"kind": "freepbx", "dir": str(directory), **target}],
        }
    )
    return reconcile.plan(config, {"ipv4": NEW})


def test_only_the_override_files_change_and_the_users_lines_stay(pbx: Path) -> None:
    before = {p.name: p.read_bytes() for p in pbx.iterdir()}
    the_plan = plan(pbx)
    diff = the_plan.diff().replace(str(pbx), "freepbx")
    assert diff.encode() == (CORPUS / "freepbx" / "expected.diff").read_bytes()
    assert {change.path.name for change in the_plan.changes} == {
        OVERRIDES,
        "sip_general_custom.conf",
    }
    for change in the_plan.changes:
        assert change.new.startswith(before[change.path.name])  # the user's text, byte for byte
    pjsip, sip = the_plan.targets
    assert (pjsip.kind, sip.kind, sip.module) == ("pjsip", "chan_sip", "chan_sip.so")
    assert pjsip.expected == {
        name: {"external_signaling_address": NEW, "external_media_address": NEW}
        for name in ("0.0.0.0-udp", "0.0.0.0-tcp")
    }
    assert any(
        "FreePBX's External Address is 203.0.113.5 (Settings > Asterisk SIP Settings); ipwatch"
        f" sets {NEW} in {OVERRIDES}" in note
        for note in pjsip.notes
    )


def test_once_applied_the_plan_is_in_sync_and_a_new_address_edits_in_place(pbx: Path) -> None:
    for change in plan(pbx).changes:
        change.path.write_bytes(change.new)
    assert plan(pbx).in_sync
    config = parse(
        {
            "source": [{"kind": "command", "argv": ["true"]}],
            "target": [{"kind": "freepbx", "dir": str(pbx)}],
        }
    )
    moved = reconcile.plan(config, {"ipv4": "198.51.100.9"})
    edits = [edit for target in moved.targets for edit in target.edits]
    assert edits and all(edit.old == NEW and edit.new == "198.51.100.9" for edit in edits)
    for change in moved.changes:
        assert len(change.new.splitlines()) == len(change.old.splitlines())


def test_the_generated_files_are_never_edited_even_when_they_say_the_address(pbx: Path) -> None:
    generated = pbx / "pjsip.transports.conf"
    generated.write_text(generated.read_text().replace("203.0.113.5", NEW))
    the_plan = plan(pbx)
    assert all(change.path.name != generated.name for change in the_plan.changes)
    assert any(change.path.name == OVERRIDES for change in the_plan.changes)


def test_named_transports_only(pbx: Path) -> None:
    the_plan = plan(pbx, transports=["0.0.0.0-udp"])
    assert set(the_plan.targets[0].expected) == {"0.0.0.0-udp"}
    with pytest.raises(ConfFileError, match="no transport named nope"):
        plan(pbx, transports=["nope"])


def test_a_transport_without_local_net_is_refused_saying_why(pbx: Path) -> None:
    generated = pbx / "pjsip.transports.conf"
    generated.write_text(generated.read_text().replace("local_net=192.168.1.0/24\n", "", 1))
    with pytest.raises(ConfFileError) as refused:
        plan(pbx)
    message = str(refused.value)
    assert "transport 0.0.0.0-udp has no local_net" in message
    assert "give phones on the LAN the public address" in message and "Local Networks" in message


def test_a_missing_override_file_is_named(pbx: Path) -> None:
    # Asterisk refuses a missing #include too, so this only happens to a damaged install.
    (pbx / OVERRIDES).unlink()
    with pytest.raises(ConfFileError, match=f'#include "{OVERRIDES}" matches no file'):
        plan(pbx)


def test_a_directory_that_is_not_freepbxs_is_named(pbx: Path) -> None:
    top = pbx / "pjsip.conf"
    top.write_text(top.read_text().replace(f"#include {OVERRIDES}\n", ""))
    with pytest.raises(ConfFileError, match=f"does not include {OVERRIDES}, as FreePBX's does"):
        plan(pbx)


def test_without_freepbx_chan_sip_files_only_pjsip_is_planned(pbx: Path) -> None:
    (pbx / "sip_general_additional.conf").unlink()
    assert [target.kind for target in plan(pbx).targets] == ["pjsip"]


def test_crlf_and_a_missing_final_newline_are_kept(pbx: Path) -> None:
    overrides = pbx / OVERRIDES
    overrides.write_bytes(b"; mine\r\n[0.0.0.0-tcp](+)\r\ntos = cs3")
    [change] = [c for c in plan(pbx).changes if c.path.name == OVERRIDES]
    assert change.new.startswith(b"; mine\r\n[0.0.0.0-tcp](+)\r\ntos = cs3\r\n")
    assert b"\n" not in change.new.replace(b"\r\n", b"")


def test_a_pjsip_target_on_a_generated_file_points_to_kind_freepbx(pbx: Path) -> None:
    config = parse(
        {
            "source": [{"kind": "command", "argv": ["true"]}],
            "target": [{"kind": "pjsip", "file": str(pbx / "pjsip.conf")}],
        }
    )
    with pytest.raises(ConfFileError, match='use a target of kind = "freepbx"'):
        reconcile.plan(config, {"ipv4": NEW})


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ({"kind": "freepbx", "file": "/etc/asterisk/pjsip.conf"}, 'target[0].file: kind "freepbx"'),
        ({"kind": "pjsip"}, 'target[0].file: missing; this key is required for kind "pjsip"'),
    ],
)
def test_file_and_dir_belong_to_their_kinds(target: dict[str, str], error: str) -> None:
    from ipwatch.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        parse({"source": [{"kind": "command", "argv": ["true"]}], "target": [target]})
    assert error in str(refused.value)
