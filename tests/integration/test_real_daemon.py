"""`ipwatch run` against a real Asterisk: a trigger, an outside edit, SIGHUP and an Asterisk
that was down, each ending with the new address on the wire."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.notify import NotifyListener
from tests.peers.real_asterisk import (
    NEW_ADDRESS,
    OLD_ADDRESS,
    VERSIONS,
    RealAsterisk,
    RealFactory,
    ipwatch_config,
    nat_transport,
    pjsip_probe_peer,
)
from tests.peers.sip_probe import SipProbe
from tests.support import ipwatch_daemon, run_ipwatch, wait_until

pytestmark = pytest.mark.integration
TRANSPORT = "transport-udp-nat"


@dataclass
class Pbx:
    asterisk: RealAsterisk
    probe: SipProbe
    config: Path
    answer: Path
    state_dir: Path

    @property
    def pjsip(self) -> Path:
        return self.asterisk.config_dir / "pjsip.conf"

    def runs(self) -> str:
        return self.asterisk.transport(TRANSPORT).get("external_signaling_address", "")

    def set_interval(self, interval: str) -> None:
        text = self.config.read_text().replace(
            "confirm = 1\n", f'confirm = 1\ninterval = "{interval}"\n'
        )
        self.config.write_text(text)


@pytest.fixture(name="pbx", params=VERSIONS)
def pbx_fixture(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    real_asterisk_factory: RealFactory,
    sip_probe: SipProbe,
) -> Pbx:
    asterisk = real_asterisk_factory(request.param)
    registrar = f"{sip_probe.host}:{sip_probe.port}"
    asterisk.write(
        "pjsip.conf", nat_transport(asterisk) + pjsip_probe_peer(sip_probe.uri, registrar)
    )
    asterisk.start()
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    config = ipwatch_config(tmp_path, asterisk, target)
    answer = tmp_path / "answer"
    answer.write_text(OLD_ADDRESS + "\n")
    config.write_text(config.read_text().replace(f'"echo", "{NEW_ADDRESS}"', f'"cat", "{answer}"'))
    return Pbx(asterisk, sip_probe, config, answer, tmp_path / "state")


Start = Callable[[], "subprocess.Popen[str]"]


@pytest.fixture(name="run")
def run_fixture(pbx: Pbx, notify_socket: NotifyListener) -> Iterator[Start]:
    """Start `ipwatch run` (after the test has set the interval) and wait for READY."""
    with contextlib.ExitStack() as stack:

        def start() -> subprocess.Popen[str]:
            process = stack.enter_context(
                ipwatch_daemon(pbx.config, pbx.state_dir, notify_socket.env)
            )
            notify_socket.wait_for(READY="1", timeout=15)
            return process

        yield start


def test_trigger_puts_the_new_address_on_the_wire(pbx: Pbx, run: Start) -> None:
    pbx.set_interval("1h")
    run()
    pbx.probe.wait_for("REGISTER", OLD_ADDRESS)
    pbx.answer.write_text(NEW_ADDRESS + "\n")
    triggered = time.monotonic()
    assert run_ipwatch("trigger", state_dir=pbx.state_dir).returncode == 0
    pbx.probe.wait_for("REGISTER", NEW_ADDRESS, timeout=30)
    print(f"trigger -> REGISTER with the new address in {time.monotonic() - triggered:.2f} s")
    assert pbx.runs() == NEW_ADDRESS


def test_an_outside_edit_is_undone_and_asterisk_told_once(pbx: Pbx, run: Start) -> None:
    pbx.set_interval("1h")
    pbx.answer.write_text(NEW_ADDRESS + "\n")
    run()
    wait_until(lambda: pbx.runs() == NEW_ADDRESS, 10, "the first apply")
    # ipwatch's own write is recognised: the file events it causes make no second reload.
    wait_until(lambda: pbx.asterisk.pjsip_reloads() == 1, 5, "the first reload")
    temporary = pbx.pjsip.with_suffix(".edit")
    temporary.write_text(pbx.pjsip.read_text().replace(NEW_ADDRESS, OLD_ADDRESS))
    edited = time.monotonic()
    temporary.rename(pbx.pjsip)  # as FreePBX and editors write: a rename over the file
    wait_until(lambda: NEW_ADDRESS in pbx.pjsip.read_text(), 2.0, "the outside edit undone")
    print(f"outside edit undone after {time.monotonic() - edited:.2f} s")
    wait_until(lambda: pbx.asterisk.pjsip_reloads() == 2, 5, "Asterisk told again")
    pbx.probe.clear()
    pbx.asterisk.cli("pjsip qualify probe")
    pbx.probe.wait_for("OPTIONS", NEW_ADDRESS)


def test_sighup_takes_a_new_config_and_a_broken_one_is_kept_out(
    pbx: Pbx, run: Start, notify_socket: NotifyListener
) -> None:
    pbx.set_interval("1h")
    daemon = run()
    good = pbx.config.read_text()
    pbx.config.write_text(good.replace("confirm = 1", 'confirm = "often"'))
    daemon.send_signal(signal.SIGHUP)
    notify_socket.wait_for(RELOADING="1", timeout=5)
    assert "config not reloaded" in notify_socket.wait_for(READY="1", timeout=5)["STATUS"]
    assert run_ipwatch("status", state_dir=pbx.state_dir).returncode == 1
    # A good config that asks elsewhere: SIGHUP makes it count at once.
    newer = tmp_answer = pbx.answer.with_name("answer-2")
    tmp_answer.write_text(NEW_ADDRESS + "\n")
    pbx.config.write_text(good.replace(str(pbx.answer), str(newer)))
    daemon.send_signal(signal.SIGHUP)
    notify_socket.wait_for(RELOADING="1", timeout=5)
    notify_socket.wait_for(READY="1", timeout=5)
    pbx.probe.wait_for("REGISTER", NEW_ADDRESS, timeout=30)
    assert pbx.runs() == NEW_ADDRESS
    wait_until(
        lambda: run_ipwatch("status", state_dir=pbx.state_dir).returncode == 0, 5, "status OK"
    )


def test_a_reload_pending_while_asterisk_was_down_is_finished_when_it_is_back(
    pbx: Pbx, run: Start
) -> None:
    pbx.set_interval("300ms")
    run()
    wait_until(lambda: pbx.runs() == OLD_ADDRESS, 5, "Asterisk on the old address")
    # Asterisk is killed (no shutdown) and its console socket stays: the next round cannot
    # tell it, the files are written, and the reload stays pending.
    pbx.asterisk.kill()
    pbx.answer.write_text(NEW_ADDRESS + "\n")
    wait_until(lambda: NEW_ADDRESS in pbx.pjsip.read_text(), 10, "the files written")
    status = run_ipwatch("status", state_dir=pbx.state_dir)
    wait_until(
        lambda: "pending: reload Asterisk" in run_ipwatch("status", state_dir=pbx.state_dir).stdout,
        10,
        "the pending reload in status",
    )
    assert status.returncode != 0
    pbx.asterisk.start()
    wait_until(
        lambda: run_ipwatch("status", state_dir=pbx.state_dir).returncode == 0,
        20,
        "the pending reload done and status OK",
    )
    assert pbx.runs() == NEW_ADDRESS
    pbx.probe.wait_for("REGISTER", NEW_ADDRESS)


def test_a_regeneration_followed_by_a_full_reload_is_put_right(pbx: Pbx, run: Start) -> None:
    """As `fwconsole reload` does: every file rewritten, then one AMI `Reload` of everything.
    Asterisk then runs the old address from the regenerated file until ipwatch acts."""
    pbx.set_interval("1h")
    pbx.answer.write_text(NEW_ADDRESS + "\n")
    run()
    wait_until(lambda: pbx.runs() == NEW_ADDRESS, 10, "the first apply")
    regenerated = pbx.pjsip.with_suffix(".tmp")
    regenerated.write_text(pbx.pjsip.read_text().replace(NEW_ADDRESS, OLD_ADDRESS))
    regenerated.rename(pbx.pjsip)
    pbx.asterisk.cli("core reload")
    wait_until(lambda: NEW_ADDRESS in pbx.pjsip.read_text(), 5, "the file put right")
    wait_until(lambda: pbx.runs() == NEW_ADDRESS, 10, "Asterisk back on the new address")
    pbx.probe.clear()
    pbx.asterisk.cli("pjsip qualify probe")
    pbx.probe.wait_for("OPTIONS", NEW_ADDRESS)
