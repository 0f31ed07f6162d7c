"""Events end to end: a confirmed change updates a real bind9 record by RFC 2136 before Asterisk
is touched, and reaches the hooks with the old and the new address; a hook that exits 75 runs
again at the daemon's next round."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dns.message
import dns.query

from ipwatch.stun_responder import StunResponder
from tests.peers.bind9 import Bind9
from tests.support import run_ipwatch

OLD, NEW = "198.51.100.5", "198.51.100.7"
RECORDING_HOOK = """#!/bin/sh
# Appends "EVENT old new family stdin-json" for each call.
printf '%s %s %s %s ' "$1" "$IPWATCH_OLD_ADDRESS" "$IPWATCH_NEW_ADDRESS" "$IPWATCH_FAMILY" \\
    >> "$0.log"
tr -d '\\n' >> "$0.log"
echo >> "$0.log"
"""


def record(bind9: Bind9, name: str) -> set[str]:
    query = dns.message.make_query(f"{name}.{bind9.ddns_zone}", "A")
    response = dns.query.tcp(query, bind9.host, 2, bind9.port)
    return {item.to_text() for rrset in response.answer for item in rrset}


def write_config(tmp_path: Path, responder: StunResponder, bind9: Bind9, name: str) -> Path:
    secret = tmp_path / "tsig.secret"
    secret.write_text(bind9.tsig_secret + "\n")
    secret.chmod(0o600)
    hooks = tmp_path / "hooks.d"
    hooks.mkdir(mode=0o755)
    hook = hooks / "10-record"
    hook.write_text(RECORDING_HOOK)
    hook.chmod(0o755)
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "stun"\nservers = ["127.0.0.1:{responder.port}"]\n'
        f'[hooks]\ndir = "{hooks}"\n'
        f'[[ddns]]\nkind = "rfc2136"\nserver = "{bind9.server}"\nzone = "{bind9.ddns_zone}"\n'
        f'hostname = "{name}.{bind9.ddns_zone}"\ntsig_name = "{bind9.tsig_name}"\n'
        f'tsig_algorithm = "{bind9.tsig_algorithm}"\ntsig_secret_file = "{secret}"\n'
    )
    return config


def test_a_confirmed_change_updates_bind9_and_reaches_the_hooks(
    tmp_path: Path, bind9: Bind9
) -> None:
    name = f"pbx-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    with StunResponder(answer=OLD) as responder:
        config = write_config(tmp_path, responder, bind9, name)
        first = run_ipwatch("check", "--apply", config=config, state_dir=state_dir)
        assert first.returncode == 0, first.stderr
        assert record(bind9, name) == {OLD}
        responder.answer = NEW
        second = run_ipwatch("check", "--apply", config=config, state_dir=state_dir)
        assert second.returncode == 0, second.stderr
    assert record(bind9, name) == {NEW}
    assert f"ddns rfc2136-1: {name}.{bind9.ddns_zone}" in second.stderr
    assert bind9.tsig_secret not in first.stderr + second.stderr
    calls = (tmp_path / "hooks.d" / "10-record.log").read_text().splitlines()
    events = [line.split(" ", 4) for line in calls]
    # No [[target]]: nothing for Asterisk to apply, so no `applied` event.
    assert [e[:4] for e in events] == [
        ["change", "", OLD, "ipv4"],  # the first address ever: no old one
        ["change", OLD, NEW, "ipv4"],
    ]
    payload = json.loads(events[1][4])
    assert payload["ipv4"] == {"old": OLD, "new": NEW}
    assert payload["sources"] == [{"name": "stun-1", "address": NEW}]
    state = json.loads((state_dir / "state.json").read_text())
    assert state["ddns_status"]["rfc2136-1"]["status"] == "updated"
    assert bind9.tsig_secret not in json.dumps(state)


def test_a_hook_asking_for_a_retry_runs_again_at_the_next_round(
    tmp_path: Path, bind9: Bind9
) -> None:
    name = f"pbx-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    with StunResponder(answer=NEW) as responder:
        config = write_config(tmp_path, responder, bind9, name)
        flaky = tmp_path / "hooks.d" / "20-flaky"
        # Fails with "try again later" until a marker file exists.
        flaky.write_text(f'#!/bin/sh\n[ -e "{tmp_path}/up" ] || exit 75\necho "$1" >> "$0.log"\n')
        flaky.chmod(0o755)
        first = run_ipwatch("check", "--apply", config=config, state_dir=state_dir)
        assert first.returncode == 0, first.stderr
        status = run_ipwatch("status", state_dir=state_dir)
        assert "hook 20-flaky asked to be run again for change" in status.stdout
        (tmp_path / "up").touch()
        second = run_ipwatch("check", "--apply", config=config, state_dir=state_dir)
        assert second.returncode == 0, second.stderr
    assert (tmp_path / "hooks.d" / "20-flaky.log").read_text() == "change\n"
    records = (tmp_path / "hooks.d" / "10-record.log").read_text().splitlines()
    assert [line.split()[0] for line in records] == ["change"]  # the others are not run again
    assert "asked to be run again" not in run_ipwatch("status", state_dir=state_dir).stdout


def test_a_hook_that_always_asks_for_a_retry_is_given_up_after_ten_tries(
    tmp_path: Path, bind9: Bind9
) -> None:
    state_dir = tmp_path / "state"
    with StunResponder(answer=NEW) as responder:
        config = write_config(tmp_path, responder, bind9, f"pbx-{uuid.uuid4().hex[:8]}")
        stubborn = tmp_path / "hooks.d" / "20-stubborn"
        stubborn.write_text('#!/bin/sh\necho "$1" >> "$0.log"\nexit 75\n')
        stubborn.chmod(0o755)
        outputs = [
            run_ipwatch("check", "--apply", config=config, state_dir=state_dir).stderr
            for _ in range(12)
        ]
    assert (tmp_path / "hooks.d" / "20-stubborn.log").read_text() == "change\n" * 11
    assert "still asking to be run again for change after 10 tries; given up" in outputs[10]
    state = json.loads((state_dir / "state.json").read_text())
    assert state["retry_hooks"] == []
