"""`ipwatch doctor` through the real CLI: exit statuses, JSON, the state file as the source of
the public address, an Asterisk that cannot be asked, and a real Asterisk whose direct_media
finding goes away once the `--plan` diff is patched in and res_pjsip reloaded."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.peers.real_asterisk import VERSIONS, RealFactory, ipwatch_config, nat_transport
from tests.support import need, run_ipwatch

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).parent.parent / "data" / "doctor"


def write_config(directory: Path, target: str, extra: str = "") -> Path:
    config = directory / "ipwatch.toml"
    config.write_text(
        'accept = ["198.51.100.0/24"]\n[[source]]\nkind = "command"\n'
        f'argv = ["echo", "198.51.100.7"]\n[[target]]\n{target}[asterisk]\n'
        f'control = "none"\n{extra}'
    )
    config.chmod(0o600)
    return config


def doctor(config: Path, state: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    finished = run_ipwatch("doctor", "--json", *args, config=config, state_dir=state)
    result = json.loads(finished.stdout) if finished.stdout.startswith("{") else {}
    return finished.returncode, result, finished.stderr


def copy_case(case: str, tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("expected.*")
    return Path(shutil.copytree(CORPUS / case, tmp_path / case, ignore=ignore))


def test_exit_status_follows_the_worst_finding(tmp_path: Path) -> None:
    errors = copy_case("hand-written", tmp_path)
    config = write_config(tmp_path, f'kind = "pjsip"\nfile = "{errors / "pjsip.conf"}"\n')
    status, result, stderr = doctor(config, tmp_path / "state")
    assert status == 2 == result["exit"], stderr
    assert {"no-local-net", "direct-media", "qualify"} <= {f["code"] for f in result["findings"]}
    first = result["findings"][0]
    assert set(first) == {"severity", "code", "file", "line", "object", "message", "fix"}
    assert first["file"] == str(errors / "pjsip.conf")

    sane = copy_case("sane-nat", tmp_path)
    config = write_config(tmp_path, f'kind = "pjsip"\nfile = "{sane / "pjsip.conf"}"\n')
    finished = run_ipwatch("doctor", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 0, finished.stderr
    assert "info: [rtp-range]" in finished.stdout
    assert finished.stdout.endswith("doctor: 0 errors, 0 warnings, 1 note\n")


def test_plan_prints_a_diff_and_writes_nothing(tmp_path: Path) -> None:
    directory = copy_case("templates", tmp_path)
    before = (directory / "pjsip.conf").read_bytes()
    config = write_config(tmp_path, f'kind = "pjsip"\nfile = "{directory / "pjsip.conf"}"\n')
    finished = run_ipwatch("doctor", "--plan", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 2, finished.stderr
    assert finished.stdout.startswith(f"--- {directory / 'pjsip.conf'}\n")
    assert "-direct_media = yes\n+direct_media = no\n" in finished.stdout
    assert (directory / "pjsip.conf").read_bytes() == before
    assert not (tmp_path / "state").exists()  # nor the state file


def test_the_state_file_gives_the_address_and_the_cgnat_hint(tmp_path: Path) -> None:
    directory = copy_case("sane-nat", tmp_path)
    marker = tmp_path / "asked"
    config = write_config(tmp_path, f'kind = "pjsip"\nfile = "{directory / "pjsip.conf"}"\n')
    config.write_text(config.read_text().replace('"echo", "198.51.100.7"', f'"touch", "{marker}"'))
    state = tmp_path / "state"
    state.mkdir()
    router = {"name": "upnp-1", "kind": "upnp", "address": None, "no_public_address": True}
    (state / "state.json").write_text(
        json.dumps(
            {
                "version": 1,
                "families": {"ipv4": {"address": "198.51.100.7", "sources": [router]}},
                "changes": [],
                "pending": [],
                "daemon": None,
            }
        )
    )
    status, result, stderr = doctor(config, state)
    assert status == 2, stderr
    codes = [f["code"] for f in result["findings"]]
    assert codes == ["cgnat", "rtp-range"]
    assert "upnp-1 (upnp) says the router has no public address" in result["findings"][0]["message"]
    assert not marker.exists()  # the sources were not asked


def test_an_asterisk_that_cannot_be_asked_is_a_finding(tmp_path: Path) -> None:
    directory = copy_case("sane-nat", tmp_path)
    socket = tmp_path / "no-asterisk.ctl"
    config = write_config(
        tmp_path,
        f'kind = "pjsip"\nfile = "{directory / "pjsip.conf"}"\n',
        f'console_socket = "{socket}"\n',
    )
    config.write_text(config.read_text().replace('control = "none"', 'control = "console"'))
    status, result, stderr = doctor(config, tmp_path / "state")
    assert status == 1, stderr
    unreachable = [f for f in result["findings"] if f["code"] == "asterisk-unreachable"]
    assert len(unreachable) == 1 and str(socket) in unreachable[0]["message"]


def test_a_missing_target_file_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'kind = "pjsip"\nfile = "{tmp_path / "nope.conf"}"\n')
    finished = run_ipwatch("doctor", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 78
    assert "nope.conf" in finished.stderr and "Traceback" not in finished.stderr


# --- a real Asterisk ------------------------------------------------------------------------


def endpoint_with_direct_media(transport: str) -> str:
    return (
        "\n[100]\ntype = aor\nmax_contacts = 1\nqualify_frequency = 30\n"
        f"\n[100]\ntype = endpoint\ntransport = {transport}\naors = 100\ncontext = hold\n"
        "direct_media = yes\nrtp_symmetric = yes\nforce_rport = yes\nrewrite_contact = yes\n"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_real_asterisk_direct_media_found_fixed_by_the_plan_and_reloaded(
    version: str, tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    patch = need("patch", "patch")
    asterisk = real_asterisk_factory(version)
    conf = asterisk.write(
        "pjsip.conf", nat_transport(asterisk) + endpoint_with_direct_media("transport-udp-nat")
    )
    line = conf.read_text().splitlines().index("direct_media = yes") + 1
    asterisk.start()
    assert asterisk.cli("pjsip show endpoint 100").count("direct_media ") == 1
    config = ipwatch_config(tmp_path, asterisk, f'kind = "pjsip"\nfile = "{conf}"\n')
    state = tmp_path / "state"

    status, result, stderr = doctor(config, state)
    assert status == 1, stderr
    found = [f for f in result["findings"] if f["severity"] != "info"]
    assert [(f["code"], f["file"], f["line"], f["object"]) for f in found] == [
        ("direct-media", str(conf), line, "endpoint 100")
    ]

    plan = run_ipwatch("doctor", "--plan", config=config, state_dir=state)
    assert plan.returncode == 1, plan.stderr
    assert plan.stdout.count("\n-") == 1 and "+direct_media = no\n" in plan.stdout
    subprocess.run([patch, str(conf)], input=plan.stdout, text=True, check=True)
    assert "direct_media = no" in conf.read_text()

    # Files fixed, Asterisk not yet told: doctor says Asterisk still runs the old value.
    status, result, stderr = doctor(config, state)
    assert status == 1, stderr
    assert [(f["code"], f["object"]) for f in result["findings"] if f["severity"] != "info"] == [
        ("asterisk-differs", "endpoint 100")
    ]
    assert "Asterisk runs direct_media = true" in result["findings"][0]["message"]

    assert "reloaded successfully" in asterisk.cli("module reload res_pjsip.so")
    assert "direct_media                       : false" in asterisk.cli("pjsip show endpoint 100")
    status, result, stderr = doctor(config, state)
    assert status == 0, stderr
    assert [f["code"] for f in result["findings"]] == ["rtp-range"]


FREEPBX_HEADER = (
    ";--------------------------------------------------------------------------------;\n"
    ";          Do NOT edit this file as it is auto-generated by FreePBX.             ;\n"
    ";--------------------------------------------------------------------------------;\n"
)


@pytest.mark.parametrize("version", VERSIONS)
def test_real_asterisk_takes_the_freepbx_fixes_from_the_custom_post_files(
    version: str, tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    """FreePBX rewrites its files: the fixes go into the _custom_post files as
    [id](+type=...) sections, and Asterisk applies them to the right one of the sections that
    share the name (the endpoint and the AOR are both [1001])."""
    patch = need("patch", "patch")
    asterisk = real_asterisk_factory(version)
    transport = nat_transport(asterisk).replace("[transport-udp-nat]", "[0.0.0.0-udp]")
    files = {
        "pjsip.conf": "#include pjsip.transports.conf\n#include pjsip.endpoint.conf\n"
        "#include pjsip.endpoint_custom_post.conf\n#include pjsip.aor.conf\n"
        "#include pjsip.aor_custom_post.conf\n",
        "pjsip.transports.conf": transport,
        "pjsip.endpoint.conf": "[1001]\ntype=endpoint\naors=1001\ncontext=hold\n"
        "direct_media=yes\nrtp_symmetric=yes\nrewrite_contact=yes\nforce_rport=yes\n"
        "transport=0.0.0.0-udp\n",
        "pjsip.aor.conf": "[1001]\ntype=aor\nmax_contacts=1\nqualify_frequency=0\n",
    }
    for name, text in files.items():
        asterisk.write(name, FREEPBX_HEADER + "\n" + text)
    for name in ("pjsip.endpoint_custom_post.conf", "pjsip.aor_custom_post.conf"):
        asterisk.write(name, "")
    asterisk.start()
    conf = asterisk.config_dir / "pjsip.conf"
    config = ipwatch_config(tmp_path, asterisk, f'kind = "pjsip"\nfile = "{conf}"\n')
    state = tmp_path / "state"

    status, result, stderr = doctor(config, state)
    assert status == 1, stderr
    found = [(f["code"], Path(f["file"]).name) for f in result["findings"] if f["file"]]
    assert found == [("direct-media", "pjsip.endpoint.conf"), ("qualify", "pjsip.aor.conf")]
    assert "pjsip.endpoint_custom_post.conf" in result["findings"][0]["fix"]

    plan = run_ipwatch("doctor", "--plan", config=config, state_dir=state)
    assert "+[1001](+type=endpoint)\n+direct_media = no\n" in plan.stdout
    assert "+[1001](+type=aor)\n+qualify_frequency = 60\n" in plan.stdout
    subprocess.run([patch, "-p0"], input=plan.stdout, text=True, check=True, cwd="/")
    assert "reloaded successfully" in asterisk.cli("module reload res_pjsip.so")
    assert "direct_media                       : false" in asterisk.cli("pjsip show endpoint 1001")
    assert "qualify_frequency    : 60" in asterisk.cli("pjsip show aor 1001")
    status, result, stderr = doctor(config, state)
    assert status == 0, stderr
    assert [f["code"] for f in result["findings"]] == ["rtp-range"]


def test_a_freepbx_target_is_audited_from_its_directory(tmp_path: Path) -> None:
    directory = copy_case("freepbx", tmp_path)
    config = write_config(tmp_path, f'kind = "freepbx"\ndir = "{directory}"\n')
    status, result, stderr = doctor(config, tmp_path / "state")
    assert status == 2, stderr
    assert [(f["code"], f["file"] and Path(f["file"]).name) for f in result["findings"]] == [
        ("no-local-net", "pjsip.transports.conf"),
        ("direct-media", "pjsip.endpoint.conf"),
        ("qualify", "pjsip.aor.conf"),
        ("rtp-range", None),
    ]
