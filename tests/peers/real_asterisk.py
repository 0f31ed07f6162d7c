"""A real Asterisk for the tests, built once from ../shared/asterisk/ and started per test.

`build_asterisk.sh` builds each version into a cache outside the checkout (keyed by the
tarballs' sha256); this module finds that build, gives each instance its own directory tree,
AMI port, SIP ports and console socket, writes the config files the test asks for, starts
`asterisk -f` and waits for `core waitfullybooted`, and stops it by its pid at teardown. So two
tests can run side by side, and nothing is written into the install prefix.

The AMI user is README's least-privilege one (`read = system`, `write = command`); the test
itself talks to Asterisk through the console socket with the real `asterisk -rx`.
Asterisk writes its public address into Via/Contact only toward destinations outside `local_net`,
and into the SDP only when its own media address is inside it (res_pjsip_sdp_rtp.c,
change_outgoing_sdp_stream_media_address), so transports use `local_net = 127.0.0.1/32` and the
wire probe (tests/peers/sip_probe.py) listens on 127.0.0.9.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import free_port, missing, need, wait_until

VERSIONS = ("22.10.1", "20.20.1")
CHAN_SIP_VERSION = "20.20.1"  # chan_sip was removed in 21
AMI_USER = "ipwatch"
AMI_SECRET = "ipwatch-real-secret"
PROBE_HOST = "127.0.0.9"
BOOT_TIMEOUT = 60.0
HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_asterisk.sh"

# Modules that open fixed ports or need hardware: two instances side by side must not clash.
NOLOAD = [
    "chan_dahdi.so",
    "res_hep.so",
    "res_hep_pjsip.so",
    "res_hep_rtcp.so",
    "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so",
    "cdr_sqlite3_custom.so",
    "res_config_sqlite3.so",
    "res_statsd.so",
    "res_smdi.so",
    "chan_iax2.so",
    "pbx_dundi.so",
    "chan_unistim.so",
    "chan_mgcp.so",
    "chan_skinny.so",
    "res_http_websocket.so",
    "res_pjsip_transport_websocket.so",
    "chan_motif.so",
    "res_xmpp.so",
    "res_stun_monitor.so",
    "res_ari.so",
    "pbx_ael.so",
    "res_fax.so",
    "chan_rtp.so",
    "res_calendar.so",
]

MANAGER_USER = f"""\
[{AMI_USER}]
secret = {AMI_SECRET}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = system
write = command
"""

# A call that stays up until hung up: `channel originate Local/s@hold application Wait 3600`.
EXTENSIONS = """\
[hold]
exten => s,1,Answer()
 same => n,Wait(3600)
 same => n,Hangup()
"""


def sources_dir() -> Path:
    configured = os.environ.get("IPWATCH_ASTERISK_SOURCES")
    return Path(configured) if configured else HERE.parents[2] / "shared" / "asterisk"


@functools.cache
def prefix_of(version: str) -> Path:
    """The install prefix of a cached build of `version`, building it first if needed."""
    need("cc", "build-essential")
    need("make", "make")
    need("pkg-config", "pkg-config")
    need("xz", "xz-utils")
    need("bzip2", "bzip2")
    need("curl", "curl")  # configure refuses to run without curl or wget
    tarball = sources_dir() / f"asterisk-{version}.tar.xz"
    if not tarball.is_file():
        missing(f"the Asterisk sources are not here: {tarball} (set IPWATCH_ASTERISK_SOURCES)")
    built = subprocess.run(
        ["bash", str(BUILD_SCRIPT), version, str(sources_dir())],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"building Asterisk {version} failed:\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


class RealAsterisk:
    """One Asterisk instance with its own tree; configure with `write`, then `start`."""

    def __init__(self, version: str, root: Path) -> None:
        self.version = version
        self.prefix = prefix_of(version)
        self.root = root
        self.config_dir = root / "etc"
        self.run_dir = root / "run"
        self.ami_port = free_port(kind=socket.SOCK_STREAM)
        self.sip_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        for name in ("etc", "run", "lib", "log", "spool", "agi"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self._write_base()

    @property
    def console_path(self) -> Path:
        return self.run_dir / "asterisk.ctl"

    @property
    def asterisk_conf(self) -> Path:
        return self.config_dir / "asterisk.conf"

    @property
    def chan_sip(self) -> bool:
        return self.version == CHAN_SIP_VERSION

    def _write_base(self) -> None:
        directories = {
            "astetcdir": self.config_dir,
            "astmoddir": self.prefix / "lib" / "asterisk" / "modules",
            "astvarlibdir": self.root / "lib",
            "astdbdir": self.root / "lib",
            "astkeydir": self.root / "lib",
            "astdatadir": self.root / "lib",
            "astagidir": self.root / "agi",
            "astspooldir": self.root / "spool",
            "astrundir": self.run_dir,
            "astlogdir": self.root / "log",
            "astsbindir": self.prefix / "sbin",
        }
        self.write(
            "asterisk.conf",
            "[directories]\n"
            + "".join(f"{key} => {value}\n" for key, value in directories.items())
            + "[options]\nverbose = 3\n",
        )
        self.write(
            "modules.conf",
            "[modules]\nautoload = yes\n" + "".join(f"noload => {m}\n" for m in NOLOAD),
        )
        self.write(
            "manager.conf",
            f"[general]\nenabled = yes\nport = {self.ami_port}\nbindaddr = 127.0.0.1\n\n"
            + MANAGER_USER,
        )
        self.write("logger.conf", "[logfiles]\nmessages => notice,warning,error,verbose\n")
        self.write("extensions.conf", EXTENSIONS)

    def write(self, name: str, text: str) -> Path:
        path = self.config_dir / name
        path.write_text(text)
        return path

    def start(self, wrapper: Sequence[str] = ()) -> RealAsterisk:
        """Start it (under `wrapper`, e.g. a private mount namespace) and wait until it booted."""
        binary = self.prefix / "sbin" / "asterisk"
        out = (self.root / "log" / "stdout").open("wb")
        self.process = subprocess.Popen(
            [*wrapper, str(binary), "-C", str(self.asterisk_conf), "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        wait_until(self._console_ready, BOOT_TIMEOUT, f"Asterisk {self.version} to start")
        self.cli("core waitfullybooted", timeout=BOOT_TIMEOUT)
        return self

    def _console_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"Asterisk {self.version} exited at start:\n{self.log_tail()}")
        return self.console_path.exists()

    def cli(self, command: str, timeout: float = 30.0) -> str:
        """Run a CLI command through the real `asterisk -rx` and return what it prints."""
        done = subprocess.run(
            [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.asterisk_conf), "-rx", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for name in ("messages", "stdout"):
            path = self.root / "log" / name
            if path.exists():
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def logged(self, text: str) -> int:
        """How many lines of Asterisk's messages log contain `text`."""
        path = self.root / "log" / "messages"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return sum(text in line for line in lines)

    def pjsip_reloads(self) -> int:
        """Reloads of res_pjsip that re-read a changed pjsip.conf (with `allow_reload = no`,
        res_pjsip/config_transport.c logs this once per transport and reload)."""
        return self.logged("is not fully reloadable")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with_group = os.getpgid(self.process.pid)
        os.killpg(with_group, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """Make it vanish at once, as a crash would: no shutdown, the socket file stays."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
            self.process.wait()

    def transport(self, name: str) -> dict[str, str]:
        """`pjsip show transport NAME` as key -> value."""
        rows: dict[str, str] = {}
        for line in self.cli(f"pjsip show transport {name}").splitlines():
            key, colon, value = line.partition(" : ")
            if colon:
                rows[key.strip()] = value.strip()
        return rows

    def sip_settings(self) -> dict[str, str]:
        """`sip show settings` as key -> value (first occurrence)."""
        rows: dict[str, str] = {}
        for line in self.cli("sip show settings").splitlines():
            key, colon, value = line.partition(":")
            if colon and key.strip() and key.strip() not in rows:
                rows[key.strip()] = value.strip()
        return rows

    def active_calls(self) -> int:
        output = self.cli("core show channels count")
        for line in output.splitlines():
            if "active call" in line:
                return int(line.split()[0])
        raise AssertionError(f"no call count in {output!r}")


RealFactory = Callable[[str], RealAsterisk]


@pytest.fixture(name="real_asterisk_factory")
def real_asterisk_factory_fixture() -> Iterator[RealFactory]:
    """Make unstarted real Asterisks of a version; each gets a short private root (the console
    socket path must fit in sun_path) and is stopped and removed at teardown."""
    made: list[RealAsterisk] = []

    def make(version: str) -> RealAsterisk:
        root = Path(tempfile.mkdtemp(prefix="ast-"))
        instance = RealAsterisk(version, root)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.stop()
        shutil.rmtree(instance.root, ignore_errors=True)


OLD_ADDRESS, NEW_ADDRESS = "198.51.100.5", "198.51.100.7"


def nat_transport(asterisk: RealAsterisk, address: str = OLD_ADDRESS) -> str:
    """A PJSIP transport behind NAT on the instance's SIP port, as a FreePBX box has one."""
    return (
        "[transport-udp-nat]\ntype = transport\nprotocol = udp\n"
        f"bind = 127.0.0.1:{asterisk.sip_port}\n"
        f"external_media_address = {address}\nexternal_signaling_address = {address}\n"
        "local_net = 127.0.0.1/32\nallow_reload = no\n"
    )


def pjsip_probe_peer(probe_uri: str, registrar: str) -> str:
    """An endpoint Asterisk qualifies and calls at the probe, and a registration to it."""
    return (
        f"\n[probe]\ntype = aor\ncontact = {probe_uri}\n"
        "\n[probe]\ntype = endpoint\ntransport = transport-udp-nat\naors = probe\n"
        "context = hold\ndisallow = all\nallow = ulaw\ndirect_media = no\n"
        "\n[probe-reg]\ntype = registration\ntransport = transport-udp-nat\n"
        f"server_uri = sip:{registrar}\nclient_uri = sip:pbx@{registrar}\n"
        "retry_interval = 5\nexpiration = 120\n"
    )


def sip_conf(asterisk: RealAsterisk, probe_host: str, probe_port: int, address: str) -> str:
    """chan_sip behind NAT with a peer at the probe and a registration to it."""
    return (
        f"[general]\nudpbindaddr = 127.0.0.1:{asterisk.sip_port}\nexternaddr = {address}\n"
        "localnet = 127.0.0.1/255.255.255.255\ncontext = hold\n"
        f"register => pbx@{probe_host}:{probe_port}\n"
        f"\n[probe]\ntype = friend\nhost = {probe_host}\nport = {probe_port}\n"
        "context = hold\ndisallow = all\nallow = ulaw\n"
    )


def ipwatch_config(
    directory: Path,
    asterisk: RealAsterisk,
    target: str,
    *,
    address: str = NEW_ADDRESS,
    **extra: str,
) -> Path:
    """An ipwatch.toml for `asterisk`: a command source answering `address`, the target
    (`kind` and `file` lines), AMI with README's user, and `extra` [asterisk] keys."""
    secret = directory / "ami.secret"
    secret.write_text(AMI_SECRET + "\n")
    secret.chmod(0o600)
    settings = {"control": "ami", "drain": "1s"} | extra
    lines = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    config = directory / "ipwatch.toml"
    config.write_text(
        'confirm = 1\naccept = ["198.51.100.0/24", "2001:db8::/32"]\n'
        f'[[source]]\nkind = "command"\nargv = ["echo", "{address}"]\n'
        f"[[target]]\n{target}"
        f'[asterisk]\n{lines}console_socket = "{asterisk.console_path}"\n'
        f'ami = {{ host = "127.0.0.1", port = {asterisk.ami_port}, username = "{AMI_USER}",'
        f' secret_file = "{secret}" }}\n'
    )
    return config
