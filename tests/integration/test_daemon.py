"""`ipwatch run` end to end: a subprocess with a real notify socket, STUN responders whose answer
the test changes, a target file and the stand-in Asterisk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import pytest

from ipwatch.stun_responder import StunResponder
from tests.peers.notify import NotifyListener
from tests.peers.stand_in import DEFAULT_SECRET, StandInAsterisk, StandInFactory
from tests.peers.stand_in import NAT_TRANSPORT as PJSIP
from tests.peers.stand_in import NEW_ADDRESS as NEW
from tests.peers.stand_in import OLD_ADDRESS as OLD
from tests.support import missing, run_ipwatch, wait_until

FAKETIMES = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


@dataclass
class Setup:
    config: Path
    state_dir: Path
    asterisk: StandInAsterisk
    responders: list[StunResponder]

    @property
    def pjsip(self) -> Path:
        return self.asterisk.config_dir / "pjsip.conf"

    def answer(self, address: str) -> None:
        for responder in self.responders:
            responder.answer = address

    def reloads(self) -> int:
        return self.asterisk.commands().count("module reload res_pjsip.so")

    def asterisk_shows(self, address: str) -> bool:
        state = self.asterisk.effective_transport("transport-udp-nat")
        return state is not None and address in str(state)

    def write_config(self, interval: str, extra: str = "") -> None:
        secret = self.config.parent / "ami.secret"
        secret.write_text(DEFAULT_SECRET + "\n")
        secret.chmod(0o600)
        servers = "".join(
            f'[[source]]\nkind = "stun"\nservers = ["127.0.0.1:{r.port}"]\ntimeout = "300ms"\n'
            for r in self.responders
        )
        self.config.write_text(
            f'interval = "{interval}"\nconfirm = 2\nfast_confirm = "300ms"\n'
            f'accept = ["198.51.100.0/24"]\n{extra}{servers}'
            f'[[target]]\nkind = "pjsip"\nfile = "{self.pjsip}"\n'
            f'[asterisk]\ncontrol = "ami"\ndrain = "1s"\n'
            f'ami = {{ host = "127.0.0.1", port = {self.asterisk.ami_port},'
            f' username = "ipwatch", secret_file = "{secret}" }}\n'
            f'[hooks]\ndir = "{self.config.parent / "hooks.d"}"\n'
        )

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.state_dir / "state.json").read_text()))


@pytest.fixture
def setup(tmp_path: Path, stand_in_factory: StandInFactory) -> Iterator[Setup]:
    asterisk = stand_in_factory(files={"pjsip.conf": PJSIP})
    with StunResponder(answer=OLD) as one, StunResponder(answer=OLD) as two:
        yield Setup(tmp_path / "ipwatch.toml", tmp_path / "state", asterisk, [one, two])


class Daemon:
    def __init__(self, setup: Setup, notify: NotifyListener, env: dict[str, str]) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
        command = ["-c", str(setup.config), "--state-dir", str(setup.state_dir), "run"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ipwatch", *command],
            env=environment | notify.env | env,
            stderr=subprocess.PIPE,
            text=True,
        )

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=20)
        return self.process.returncode, stderr


class Start(Protocol):
    def __call__(self, **env: str) -> Daemon: ...


@pytest.fixture
def start(setup: Setup, notify_socket: NotifyListener) -> Iterator[Start]:
    started: list[Daemon] = []

    def launch(**env: str) -> Daemon:
        daemon = Daemon(setup, notify_socket, env)
        started.append(daemon)
        return daemon

    yield launch
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
        print(daemon.process.communicate()[1])  # the daemon's log, shown when a test fails


def test_a_change_is_applied_within_interval_plus_confirmation(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("3s")
    daemon = start()
    notify_socket.wait_for(READY="1", timeout=15)
    notify_socket.wait_for(lambda m: m.get("STATUS", "").startswith(f"ipv4 {OLD} (2/2"), 5)
    setup.answer(NEW)
    changed_at = time.monotonic()
    wait_until(lambda: setup.asterisk_shows(NEW), 3.3 + 2 * 0.33 + 2, "Asterisk to show NEW")
    reaction = time.monotonic() - changed_at
    assert NEW in setup.pjsip.read_text() and OLD not in setup.pjsip.read_text()
    notify_socket.wait_for(lambda m: NEW in m.get("STATUS", ""), timeout=5)
    status = run_ipwatch("status", "--json", state_dir=setup.state_dir)
    report = json.loads(status.stdout)
    assert report["ipv4"]["address"] == NEW
    assert report["changes"][-1]["old"] == OLD and report["changes"][-1]["new"] == NEW
    assert report["daemon"]["alive"] is True
    code, stderr = daemon.stop()
    assert code == 0, stderr
    assert f"ipv4 {OLD} -> {NEW}" in stderr
    notify_socket.wait_for(STOPPING="1", timeout=5)
    print(f"reaction to a WAN change: {reaction:.2f} s")


def test_trigger_without_a_daemon_exits_3(tmp_path: Path) -> None:
    result = run_ipwatch("trigger", state_dir=tmp_path)
    assert result.returncode == 3
    assert "no `ipwatch run` is running" in result.stderr


def test_a_second_daemon_exits_at_once(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    start()
    notify_socket.wait_for(READY="1", timeout=15)
    second = run_ipwatch("run", config=setup.config, state_dir=setup.state_dir, timeout=10)
    assert second.returncode == 3
    assert "another `ipwatch run` (pid" in second.stderr


def test_a_config_edit_reloads_like_sighup(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    start()
    notify_socket.wait_for(READY="1", timeout=15)
    setup.write_config("2s")
    notify_socket.wait_for(RELOADING="1", timeout=5)
    notify_socket.wait_for(READY="1", timeout=5)
    notify_socket.wait_for(lambda m: "STATUS" in m and "READY" not in m, 5)  # the round after
    setup.answer(NEW)  # the new 2 s interval now finds the change without a trigger
    wait_until(lambda: setup.asterisk_shows(NEW), 2.2 + 2 * 0.33 + 2, "the change at 2 s")


def test_sigterm_and_sigint_exit_0(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    for number in (signal.SIGTERM, signal.SIGINT):
        daemon = start()
        notify_socket.wait_for(READY="1", timeout=15)
        daemon.signal(number)
        code, stderr = daemon.stop()
        assert code == 0, stderr
        notify_socket.wait_for(STOPPING="1", timeout=5)
        assert "Traceback" not in stderr


def test_watchdog_pings_at_half_the_timeout(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    start(WATCHDOG_USEC="400000")
    notify_socket.wait_for(READY="1", timeout=15)
    first = notify_socket.wait_for(WATCHDOG="1", timeout=2)
    began = time.monotonic()
    for _ in range(4):
        notify_socket.wait_for(WATCHDOG="1", timeout=1)
    assert first and 0.5 < time.monotonic() - began < 2.0


@pytest.mark.parametrize("jump", ["+5y", "-5y"])
def test_a_wall_clock_jump_neither_bursts_nor_stalls(
    setup: Setup, start: Start, notify_socket: NotifyListener, tmp_path: Path, jump: str
) -> None:
    if not FAKETIMES:
        missing("libfaketime is not installed (apt-get install libfaketime)")
    setup.write_config("1s")
    # libfaketime re-reads this file at every clock reading: keep it out of watched directories.
    (tmp_path / "faketime").mkdir()
    offset = tmp_path / "faketime" / "offset"
    offset.write_text("+0\n")
    daemon = start(
        LD_PRELOAD=str(FAKETIMES[0]),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_CACHE_DURATION="1",  # re-read the offset each second, not at every reading
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    notify_socket.wait_for(READY="1", timeout=15)
    notify_socket.wait_for(lambda m: m.get("STATUS", "").startswith(f"ipv4 {OLD} (2/2"), 5)
    responder = setup.responders[0]
    settled = responder.requests
    wait_until(lambda: responder.requests >= settled + 2, 5, "rounds before the jump")
    offset.write_text(f"{jump}\n")
    jumped_at, before = time.monotonic(), responder.requests
    wait_until(lambda: responder.requests >= before + 4, 8, f"rounds after a {jump} jump")
    elapsed = time.monotonic() - jumped_at
    # Four rounds 0.9-1.1 s apart: a burst would be far quicker, a stall far slower.
    assert elapsed > 2.5, f"{responder.requests - before} rounds in {elapsed:.1f} s: a burst"
    _, stderr = daemon.stop()
    assert "clock: the wall clock jumped by" in stderr  # the jump did happen


@pytest.fixture
def draining(tmp_path: Path, stand_in_factory: StandInFactory) -> Iterator[Setup]:
    """An Asterisk 16.10 (PJSIP changes need a restart) with a call up, a 30 s drain, and the new
    address already in the state file, so the daemon's first round goes straight to draining."""
    asterisk = stand_in_factory(
        files={"pjsip.conf": PJSIP}, version="16.10.0", restart_downtime=0.2
    )
    asterisk.set_calls(1)
    with StunResponder(answer=NEW) as one, StunResponder(answer=NEW) as two:
        setup = Setup(tmp_path / "ipwatch.toml", tmp_path / "state", asterisk, [one, two])
        setup.write_config("1h")
        setup.config.write_text(setup.config.read_text().replace('drain = "1s"', 'drain = "30s"'))
        assert run_ipwatch("check", config=setup.config, state_dir=setup.state_dir).returncode == 1
        yield setup


def test_a_first_round_draining_calls_reports_ready_meanwhile(
    draining: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    """A restart waiting for calls can take `drain`: systemd must hear READY before that."""
    start()
    ready = notify_socket.wait_for(READY="1", timeout=15)
    assert "waiting for 1 call until" in ready["STATUS"]
    assert not draining.asterisk_shows(NEW)
    draining.asterisk.set_calls(0)
    wait_until(lambda: draining.asterisk_shows(NEW), 15, "the restart once the call ended")


def test_sigterm_cuts_a_drain_short_and_keeps_the_restart_pending(
    draining: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    daemon = start()
    notify_socket.wait_for(READY="1", timeout=15)
    stopped_at = time.monotonic()
    code, stderr = daemon.stop()
    assert code == 0, stderr
    assert time.monotonic() - stopped_at < 7  # one poll of the call count (5 s) at most
    assert "interrupted by the stop; a pending Asterisk action is kept" in stderr
    status = run_ipwatch("status", "--json", state_dir=draining.state_dir)
    assert any("restart Asterisk" in item for item in json.loads(status.stdout)["pending"])
    assert not draining.asterisk_shows(NEW)


def test_a_trigger_during_a_round_is_not_lost(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    # A third source that takes 1.5 s makes every round that long.
    slow = f'[[source]]\nkind = "command"\nargv = ["sh", "-c", "sleep 1.5; echo {OLD}"]\n'
    setup.write_config("1h", extra=slow + 'timeout = "5s"\n')
    start()
    notify_socket.wait_for(READY="1", timeout=15)
    responder = setup.responders[0]
    asked = responder.requests
    assert run_ipwatch("trigger", state_dir=setup.state_dir).returncode == 0
    wait_until(lambda: responder.requests == asked + 1, 5, "the triggered round to start")
    assert run_ipwatch("trigger", state_dir=setup.state_dir).returncode == 0  # while it runs
    wait_until(lambda: responder.requests == asked + 2, 6, "a round for the second trigger")


def test_check_apply_is_refused_while_the_daemon_runs(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    start()
    notify_socket.wait_for(READY="1", timeout=15)
    result = run_ipwatch("check", "--apply", config=setup.config, state_dir=setup.state_dir)
    assert result.returncode == 3
    assert "manages these files; use `ipwatch trigger`" in result.stderr
    assert run_ipwatch("check", config=setup.config, state_dir=setup.state_dir).returncode == 0


def test_a_rejected_address_is_critical_in_status_and_not_retried(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.asterisk.faults = replace(setup.asterisk.faults, reject_reload=True)
    setup.write_config("300ms")
    daemon = start()
    notify_socket.wait_for(READY="1", timeout=15)
    setup.answer(NEW)
    wait_until(
        lambda: "rolled back" in str(setup.state().get("daemon")), 10, "the roll-back recorded"
    )
    status = run_ipwatch("status", state_dir=setup.state_dir)
    assert status.returncode == 2, status.stdout
    assert "daemon: Asterisk did not take the new address" in status.stdout
    assert OLD in setup.pjsip.read_text() and NEW not in setup.pjsip.read_text()
    reloads = setup.reloads()
    responder = setup.responders[0]
    rounds = responder.requests
    wait_until(lambda: responder.requests >= rounds + 5, 10, "more rounds")
    assert setup.reloads() == reloads  # the same rejected address is not pushed every round
    _, stderr = daemon.stop()
    # Logged where it happens, not a second time as the daemon's problem.
    rejected = [line for line in stderr.splitlines() if "did not take the new address" in line]
    assert len(rejected) == 1, rejected


def test_a_hung_round_stops_the_watchdog_pings(
    setup: Setup, start: Start, notify_socket: NotifyListener, tmp_path: Path
) -> None:
    marker = tmp_path / "hang"
    hang = (
        f'[[source]]\nkind = "command"\ntimeout = "10s"\n'
        f'argv = ["sh", "-c", "[ -e {marker} ] && sleep 4; echo {OLD}"]\n'
    )
    setup.write_config("1h", extra=hang)
    start(WATCHDOG_USEC="600000")  # a ping every 0.3 s; silence allowed for 0.6 s
    notify_socket.wait_for(READY="1", timeout=15)
    notify_socket.wait_for(WATCHDOG="1", timeout=2)
    marker.touch()
    assert run_ipwatch("trigger", state_dir=setup.state_dir).returncode == 0
    pings = count_during(lambda: pings_in(notify_socket), 2.0)
    # Without progress for 0.6 s the pings stop; a loop that pinged regardless would send ~7.
    assert pings <= 2, f"{pings} pings while the round hung"
    marker.unlink()
    notify_socket.wait_for(WATCHDOG="1", timeout=6)  # back once the round ends


def pings_in(listener: NotifyListener) -> int:
    return sum(message.get("WATCHDOG") == "1" for message in listener.messages())


def count_during(counter: Callable[[], int], seconds: float) -> int:
    """How much `counter` grows over `seconds` (a measurement, not a synchronisation)."""
    before, deadline = counter(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return counter() - before


def test_no_quorum_is_logged_once_with_each_sources_answer(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("300ms")
    daemon = start()
    notify_socket.wait_for(READY="1", timeout=15)
    setup.answer("10.1.2.3")
    asked = setup.responders[0].requests
    # `confirm` (2) rounds without a quorum, and the third begun after them.
    wait_until(lambda: setup.responders[0].requests >= asked + 3, 10, "three more rounds")
    _, stderr = daemon.stop()
    [warning] = [line for line in stderr.splitlines() if "no confirmed address" in line]
    assert warning.endswith(
        "ipv4: no confirmed address (0/2 sources agree): stun-1 10.1.2.3 rejected: private"
        " address (RFC 1918); stun-2 10.1.2.3 rejected: private address (RFC 1918)"
    )


def test_a_broken_config_on_sighup_is_a_warning_in_status_until_a_good_one_loads(
    setup: Setup, start: Start, notify_socket: NotifyListener
) -> None:
    setup.write_config("1h")
    daemon = start()
    notify_socket.wait_for(READY="1", timeout=15)
    wait_until(
        lambda: run_ipwatch("status", state_dir=setup.state_dir).returncode == 0,
        10,
        "status OK once the address is confirmed",
    )
    good = setup.config.read_text()
    setup.config.write_text(good.replace("confirm = 2", 'confirm = "often"'))
    daemon.signal(signal.SIGHUP)
    status = wait_until(
        lambda: warning_status(setup.state_dir), 10, "status WARNING about the config"
    )
    assert status.stdout.startswith(
        f"IPWATCH WARNING - daemon: config not reloaded, the previous one stays in force:"
        f" {setup.config}: confirm: expected a whole number of at least 1, got 'often'"
    ), status.stdout
    setup.config.write_text(good)
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: run_ipwatch("status", state_dir=setup.state_dir).returncode == 0,
        10,
        "status OK once the config is good again",
    )
    daemon.stop()


def warning_status(state_dir: Path) -> subprocess.CompletedProcess[str] | None:
    found = run_ipwatch("status", state_dir=state_dir)
    return found if found.returncode == 1 else None
