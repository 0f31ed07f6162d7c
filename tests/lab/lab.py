"""A NAT lab in network namespaces (LAB.md): a LAN host behind a NAT router on a small "Internet".

    lan 192.0.2.2 ── r-lan 192.0.2.1 rtr r-wan 198.51.100.10 ── w0 198.51.100.1 wan
                                  (masquerade)                     (coturn, ...)

With `cgnat=True` a carrier-grade NAT sits between the router and the Internet, so the router's
own WAN address is 100.64.0.10 while the Internet still sees 198.51.100.10:

    lan ── rtr r-wan 100.64.0.10 ── c-in 100.64.0.1 cgn c-wan 198.51.100.10 ── w0 wan

Nothing routes to the real network. Every lab gets a name prefix of its own (process id and a
counter), so parallel runs never collide and a crashed run's leftovers never break a new one;
`Lab.open` removes labs whose process is gone. `teardown` always runs, stops what the lab
started, kills anything still inside its namespaces, and deletes them.

As root the lab uses `ip netns` directly. Otherwise, when unprivileged user namespaces work, a
holder process owns a user, mount and network namespace (`unshare -rnm`, a tmpfs on /run for
/run/netns) and every command enters it with nsenter first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.peers.bind9 import Bind9, named_setup
from tests.peers.coturn import coturn_command
from tests.support import SBIN_DIRS, missing, need, run_ipwatch, stop, wait_until

Role = Literal["lan", "rtr", "cgn", "wan"]

LAN_HOST = "192.0.2.2"
ROUTER_LAN = "192.0.2.1"
INTERNET_SERVER = "198.51.100.1"  # coturn and anything else "on the Internet" listens here
PUBLIC_ADDRESS = "198.51.100.10"  # what the Internet sees at first
CGNAT_ROUTER_WAN = "100.64.0.10"
CGNAT_GATEWAY = "100.64.0.1"
STUN_PORT = 3478
NATPMP_PORT = 5351
DNS_PORT = 53
UPNP_PORT = 5000
LAB_NETWORKS = ["198.51.100.0/24", "192.0.2.0/24"]  # for `accept`: the lab's "public" ranges
# miniupnpd announces nothing for a reserved WAN address (LAB.md, "Router push"): push tests give
# the router addresses from these instead, routed only inside the lab.
PUSH_NETWORKS = ["198.51.101.0/24", "198.51.102.0/24"]
PUSH_ADDRESS = "198.51.101.10"
START_TIMEOUT = 15.0

# Found in PATH or the sbin directories, where a non-root user's PATH may not reach: commands
# run in the namespaces (`ip netns exec NS nft`) get a PATH with those directories too.
_TOOLS = (("ip", "iproute2"), ("ss", "iproute2"), ("nft", "nftables"), ("sysctl", "procps"))
_ENV = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])}
_IP = shutil.which("ip", path=_ENV["PATH"]) or "ip"  # also in the prefix of run_ipwatch's command
_counter = itertools.count(1)
_NAME = re.compile(r"ipw(\d+)x(\d+)-(lan|rtr|cgn|wan)")
_NAMED_RUNNING = re.compile(r"^\S+ \S+ running$", re.MULTILINE)


@dataclass(frozen=True)
class _Server:
    process: subprocess.Popen[bytes]
    log: Path


class Lab:
    """The namespaces and what runs in them; build with `Lab.open`, which tears it down."""

    def __init__(
        self, directory: Path, *, cgnat: bool = False, public_address: str = PUBLIC_ADDRESS
    ) -> None:
        self.directory = directory
        self.cgnat = cgnat
        self.prefix = f"ipw{os.getpid()}x{next(_counter)}"
        self.roles: tuple[Role, ...] = (
            ("wan", "cgn", "rtr", "lan") if cgnat else ("wan", "rtr", "lan")
        )
        self.public_address = public_address
        self._enter: list[str] = []  # the nsenter prefix when running in a user namespace
        self._holder: subprocess.Popen[bytes] | None = None
        self._servers: dict[str, _Server] = {}
        self._created: list[str] = []
        self._named: tuple[list[str], str] | None = None  # named's command line and TSIG secret

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, directory: Path, *, cgnat: bool = False, public_address: str = PUBLIC_ADDRESS
    ) -> Iterator[Lab]:
        """Build a lab in `directory` and tear it down afterwards, however the block ends;
        the Internet first sees `public_address` (one of PUSH_NETWORKS for push tests)."""
        for program, package in _TOOLS:
            need(program, package)
        lab = cls(directory, cgnat=cgnat, public_address=public_address)
        try:
            lab._enter = lab._privileges()
            if not lab._enter:
                remove_stale_labs()
            lab._build()
            yield lab
        finally:
            lab.teardown()

    # --- running things --------------------------------------------------------------------

    def ns(self, role: Role) -> str:
        return f"{self.prefix}-{role}"

    def inside(self, role: Role) -> list[str]:
        """The command prefix that runs a program in `role`'s namespace."""
        return [*self._enter, _IP, "netns", "exec", self.ns(role)]

    def run(
        self, role: Role, argv: Sequence[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `role`'s namespace to completion; fail the test if it fails."""
        return self._run([*self.inside(role), *argv], input=input, check=check)

    def spawn(self, role: Role, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a server in `role`'s namespace, its output in DIR/NAME.log; teardown stops it."""
        if name in self._servers:
            raise ValueError(f"a server named {name} is already running in the lab")
        log = self.directory / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*self.inside(role), *argv],
                env=_ENV,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._servers[name] = _Server(process, log)
        return process

    def stop(self, name: str) -> None:
        stop(self._servers.pop(name).process)

    def log(self, name: str) -> str:
        return self._servers[name].log.read_text(errors="replace")

    def ipwatch(
        self, role: Role, *args: str, config: Path, state_dir: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI inside `role`'s namespace, as a user there would."""
        return run_ipwatch(
            *args, config=config, state_dir=state_dir, timeout=60, wrapper=self.inside(role)
        )

    def pids(self) -> set[int]:
        """The processes inside the lab's namespaces right now."""
        found: set[int] = set()
        for ns in self._created:
            listed = self._run([*self._enter, _IP, "netns", "pids", ns], check=False).stdout
            found |= {int(pid) for pid in listed.split()}
        return found

    def namespaces(self) -> set[str]:
        """The lab's namespaces that exist right now."""
        listed = self._run([*self._enter, _IP, "netns", "list"], check=False).stdout
        return {line.split()[0] for line in listed.splitlines() if line.startswith(self.prefix)}

    # --- changing the network --------------------------------------------------------------

    def set_wan_address(self, new: str) -> None:
        """Give the NAT facing the Internet another public address: add the new one, then
        delete the old (with promote_secondaries the interface is never address-less)."""
        role, interface = self._public_side()
        self.run(role, ["ip", "addr", "add", f"{new}/24", "dev", interface])
        self.run(role, ["ip", "addr", "del", f"{self.public_address}/24", "dev", interface])
        self.public_address = new

    def drop(self, role: Role, rule: str) -> None:
        """Add an nft rule to `role`'s input filter, e.g. "udp dport 5351 drop"."""
        self.run(
            role,
            ["nft", "-f", "-"],
            input=(
                "table inet ipwdrop {\n"
                "  chain input { type filter hook input priority 0; policy accept; }\n"
                "}\n"
                f"add rule inet ipwdrop input {rule}\n"
            ),
        )

    def count(self, role: Role, name: str, hook: Literal["input", "output"], match: str) -> None:
        """Count the packets of `role` matching `match` (nft syntax, e.g. 'oifname "l0"') in its
        input or output; read the counter with `counted(role, name)`."""
        rules = f"table inet ipwcount {{\n{_COUNT_CHAINS}}}\n"
        rules += f"add counter inet ipwcount {name}\n"
        rules += f"add rule inet ipwcount {hook} {match} counter name {name}\n"
        self.run(role, ["nft", "-f", "-"], input=rules)

    def counted(self, role: Role, name: str) -> tuple[int, int]:
        """(packets, bytes) counted so far by the counter `name` of `count`."""
        listed = self.run(role, ["nft", "-j", "list", "counter", "inet", "ipwcount", name]).stdout
        items = json.loads(listed)["nftables"]
        [counter] = [item["counter"] for item in items if "counter" in item]
        return int(counter["packets"]), int(counter["bytes"])

    # --- servers ---------------------------------------------------------------------------

    def start_coturn(self, port: int = STUN_PORT) -> str:
        """coturn answering STUN at 198.51.100.1:PORT in wan (a second one on another port is
        a second, independent STUN server); returns "host:port"."""
        name = "coturn" if port == STUN_PORT else f"coturn-{port}"
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        process = self.spawn("wan", name, coturn_command(INTERNET_SERVER, port, directory))
        self._wait_listening("wan", name, process, "-u", INTERNET_SERVER, port)
        return f"{INTERNET_SERVER}:{port}"

    def start_bind9(self) -> Bind9:
        """named in wan at 198.51.100.1:53, authoritative for the zones of tests/peers/bind9.py
        (updates to "ddns.test" signed with its TSIG key). Started again after `stop("named")`,
        it keeps its key and the updates it had taken (its journal)."""
        if self._named is None:
            directory = self.directory / "bind9"
            directory.mkdir()
            self._named = named_setup(directory, INTERNET_SERVER, DNS_PORT)
        command, secret = self._named
        process = self.spawn("wan", "named", command)
        # Its log is the lab's DIR/named.log, where Bind9.log() reads it.
        server = Bind9(INTERNET_SERVER, DNS_PORT, None, self.directory, process, secret)

        def running() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"named exited with {process.returncode}: {server.log()}")
            # With -g named logs "running" once its zones are loaded and it listens.
            return bool(_NAMED_RUNNING.search(server.log()))

        wait_until(running, START_TIMEOUT, "named to run in wan")
        return server

    def start_miniupnpd(self, *, stun: bool = True) -> str:
        """miniupnpd (UPnP IGD and NAT-PMP) on the router's LAN side; with `stun` it learns
        the public address from the lab's coturn (start that first), without it it reports
        none for a reserved WAN address. Returns the root description URL."""
        program = need("miniupnpd", "miniupnpd-nftables")
        self.run("rtr", ["nft", "-f", "-"], input=_MINIUPNPD_TABLES)
        config = self.directory / ("miniupnpd-stun.conf" if stun else "miniupnpd.conf")
        lines = [
            "ext_ifname=r-wan",
            "listening_ip=r-lan",
            f"port={UPNP_PORT}",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            f"lease_file={self.directory / 'upnp.leases'}",
            "allow 1024-65535 192.0.2.0/24 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
        ]
        if stun:
            lines += [
                "ext_perform_stun=yes",
                f"ext_stun_host={INTERNET_SERVER}",
                f"ext_stun_port={STUN_PORT}",
            ]
        config.write_text("\n".join(lines) + "\n")
        pidfile = self.directory / "miniupnpd.pid"
        process = self.spawn(
            "rtr", "miniupnpd", [program, "-f", str(config), "-d", "-P", str(pidfile)]
        )
        # It performs STUN before it opens its sockets, and opens NAT-PMP's last.
        self._wait_listening("rtr", "miniupnpd", process, "-u", ROUTER_LAN, NATPMP_PORT)
        return f"http://{ROUTER_LAN}:{UPNP_PORT}/rootDesc.xml"

    def _wait_listening(
        self,
        role: Role,
        name: str,
        process: subprocess.Popen[bytes],
        protocol: str,
        host: str,
        port: int,
    ) -> None:
        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}: {self.log(name)[-2000:]}"
                )
            listed = self.run(
                role, ["ss", "-Hln", protocol, f"src {host} and sport = :{port}"]
            ).stdout
            return bool(listed.strip())

        wait_until(listening, START_TIMEOUT, f"{name} listening on {host}:{port} in {role}")

    # --- building and tearing down ---------------------------------------------------------

    def _privileges(self) -> list[str]:
        """[] as root; else the nsenter prefix into a user namespace of our own; else skip."""
        if os.geteuid() == 0:
            return []
        unshare, nsenter = need("unshare", "util-linux"), need("nsenter", "util-linux")
        holder = subprocess.Popen(
            [
                unshare,
                "--map-root-user",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && mkdir /run/netns && echo ready"
                " && exec sleep infinity",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._holder = holder
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"ready":
            missing(
                "the NAT lab needs root or unprivileged user namespaces (unshare -rnm failed:"
                f" {holder.communicate()[1].decode(errors='replace').strip()})"
            )
        # unshare denied setgroups in there, so enter keeping our credentials (root inside).
        return [
            nsenter,
            f"--target={holder.pid}",
            "--user",
            "--mount",
            "--net",
            "--preserve-credentials",
        ]

    def _build(self) -> None:
        for role in self.roles:
            self._run([*self._enter, _IP, "netns", "add", self.ns(role)])
            self._created.append(self.ns(role))
        outer: Role = "cgn" if self.cgnat else "rtr"
        outer_wan = "c-wan" if self.cgnat else "r-wan"
        self._veth("wan", "w0", outer, outer_wan)
        self._veth("lan", "l0", "rtr", "r-lan")
        self._address("wan", "w0", f"{INTERNET_SERVER}/24")
        self._address(outer, outer_wan, f"{self.public_address}/24")
        for network in PUSH_NETWORKS:  # on-link for the Internet, so any address there works
            self._ip("wan", "route", "add", network, "dev", "w0")
        self._address("rtr", "r-lan", f"{ROUTER_LAN}/24")
        self._address("lan", "l0", f"{LAN_HOST}/24")
        self._route("lan", ROUTER_LAN, "l0")
        self._route(outer, INTERNET_SERVER, outer_wan)
        if self.cgnat:
            self._veth("cgn", "c-in", "rtr", "r-wan")
            self._address("cgn", "c-in", f"{CGNAT_GATEWAY}/24")
            self._address("rtr", "r-wan", f"{CGNAT_ROUTER_WAN}/24")
            self._route("rtr", CGNAT_GATEWAY, "r-wan")
            self._nat("rtr", "r-wan")
        self._nat(outer, outer_wan)
        self.run(outer, ["sysctl", "-qw", f"net.ipv4.conf.{outer_wan}.promote_secondaries=1"])

    def _veth(self, role: Role, name: str, peer_role: Role, peer: str) -> None:
        ends = [name, "netns", self.ns(role), "type", "veth", "peer", "name", peer]
        self._run([*self._enter, _IP, "link", "add", *ends, "netns", self.ns(peer_role)])
        self._ip(role, "link", "set", "lo", "up")
        self._ip(role, "link", "set", name, "up")
        self._ip(peer_role, "link", "set", "lo", "up")
        self._ip(peer_role, "link", "set", peer, "up")

    def _address(self, role: Role, interface: str, cidr: str) -> None:
        self._ip(role, "addr", "add", cidr, "dev", interface)

    def _route(self, role: Role, gateway: str, interface: str) -> None:
        # onlink: the route outlives the WAN's move to an address in another subnet.
        self._ip(role, "route", "add", "default", "via", gateway, "dev", interface, "onlink")

    def _nat(self, role: Role, interface: str) -> None:
        self.run(role, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.run(
            role,
            ["nft", "-f", "-"],
            input=(
                "table ip ipwnat {\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    oifname "{interface}" masquerade\n'
                "  }\n"
                "}\n"
            ),
        )

    def _ip(self, role: Role, *args: str) -> None:
        self._run([*self._enter, _IP, "-n", self.ns(role), *args])

    def _public_side(self) -> tuple[Role, str]:
        return ("cgn", "c-wan") if self.cgnat else ("rtr", "r-wan")

    def _run(
        self, argv: Sequence[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=30, env=_ENV, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"lab command failed ({result.returncode}): {' '.join(argv)}\n{result.stderr}"
            )
        return result

    def teardown(self) -> None:
        """Stop the servers, kill whatever else is still inside, delete the namespaces. Goes
        through every step even when one fails, then reports the first failure."""
        problems: list[str] = []
        for name in list(self._servers):
            with _noting(problems, f"stopping {name}"):
                self.stop(name)
        with _noting(problems, "killing leftover processes"):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self._created):
            with _noting(problems, f"deleting {ns}"):
                self._run([*self._enter, _IP, "netns", "del", ns])
        self._created.clear()
        if self._holder is not None:
            with _noting(problems, "stopping the user-namespace holder"):
                stop(self._holder)
                self._holder = None
        if problems:
            raise AssertionError("lab teardown: " + "; ".join(problems))


@contextlib.contextmanager
def _noting(problems: list[str], step: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        problems.append(f"{step}: {error}")


def remove_stale_labs() -> list[str]:
    """Delete the namespaces of labs whose test process is gone (a crashed or killed run),
    killing what still runs in them; return their names."""
    listed = _run_plain(_IP, "netns", "list")
    stale = []
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        for pid in _run_plain(_IP, "netns", "pids", name).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        _run_plain(_IP, "netns", "del", name)
        stale.append(name)
    return stale


def _run_plain(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_ENV, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# miniupnpd (nftables backend) adds its rules to these chains and fails without them. The
# forward chain accepts: the lab tests addresses, not the router's firewall.
_MINIUPNPD_TABLES = """\
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
"""

# For `Lab.count`: declaring existing chains again leaves their rules alone.
_COUNT_CHAINS = """\
  chain input { type filter hook input priority -10; policy accept; }
  chain output { type filter hook output priority -10; policy accept; }
"""
