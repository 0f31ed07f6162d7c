"""Third-party plugins for real: a wheel with a source kind, an updater and two broken modules is
installed by pip into a throw-away directory, and the real CLI runs with it on PYTHONPATH (as
if it were installed in site-packages; the project's .venv is never touched)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION = "ipwatch-example-plugin"
VERSION = "1.2.3"
PUBLIC = "198.51.100.77"

MODULES = {
    "ipwatch_example/__init__.py": "",
    "ipwatch_example/fixed.py": """
from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    address: str


def ask(options, family, timeout):
    return options.address
""",
    "ipwatch_example/journal.py": """
import json
from dataclasses import dataclass
from pathlib import Path

from ipwatch.ddns import Outcome, UpdateError

SECRETS = ("token",)


@dataclass(frozen=True)
class Options:
    path: str
    token_file: str | None = None


def update(options, addresses, timeout, secrets):
    if secrets["token"] != "let-me-in":  # careless: the message shows the secret
        raise UpdateError(f"the journal refused {secrets['token']}", permanent=True)
    path = Path(options.path)
    if path.exists() and json.loads(path.read_text()) == dict(addresses):
        return Outcome(False, "journal already right")
    path.write_text(json.dumps(dict(addresses)))
    return Outcome(True, "journal written")
""",
    "ipwatch_example/broken.py": "import ipwatch_example_needs_this_package\n",
    "ipwatch_example/incomplete.py": "class Options:\n    pass\n",
}
ENTRY_POINTS = """[ipwatch.sources]
fixed = ipwatch_example.fixed
broken = ipwatch_example.broken
incomplete = ipwatch_example.incomplete
stun = ipwatch_example.fixed

[ipwatch.updaters]
journal = ipwatch_example.journal
"""
ORIGIN = f"entry point of {DISTRIBUTION} {VERSION}"


def build_wheel(directory: Path) -> Path:
    """A wheel as a build backend makes it: the modules, METADATA, WHEEL, entry points, RECORD."""
    info = f"{DISTRIBUTION.replace('-', '_')}-{VERSION}.dist-info"
    files = dict(MODULES)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {VERSION}\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"  # fmt: skip # noqa: E501
    files[f"{info}/entry_points.txt"] = ENTRY_POINTS
    record = [f"{name},{_hash(text)},{len(text.encode())}" for name, text in files.items()]
    wheel = directory / f"{DISTRIBUTION.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where pip installed the plugin distribution (a --target directory)."""
    directory = tmp_path_factory.mktemp("plugin")
    target = directory / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(build_wheel(directory))],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return target


def ipwatch(*args: str, plugins: Path | None, config: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
    env.pop("PYTHONPATH", None)
    if plugins is not None:
        env["PYTHONPATH"] = str(plugins)
    return subprocess.run(
        [sys.executable, *args], input=config, capture_output=True, text=True, timeout=60,
        env=env, cwd=REPO, check=False,
    )  # fmt: skip


def cli(command: str, plugins: Path | None, config: str) -> subprocess.CompletedProcess[str]:
    return ipwatch("-m", "ipwatch", "-c", "/dev/stdin", *command.split(), plugins=plugins,
                   config=config)  # fmt: skip


FIXED = f"""accept = ["198.51.100.0/24"]
[[source]]
kind = "fixed"
address = "{PUBLIC}"
"""


def test_a_plugin_source_kind_answers_and_broken_plugins_are_reported(plugin_path: Path) -> None:
    run = cli("sources --json", plugin_path, FIXED)
    assert run.returncode == 0, run.stderr
    [source] = json.loads(run.stdout)["ipv4"]
    assert (source["name"], source["kind"], source["address"]) == ("fixed-1", "fixed", PUBLIC)
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 3, run.stderr  # one line per broken or clashing plugin
    text = "\n".join(warnings)
    assert (
        f"plugin broken = ipwatch_example.broken (ipwatch.sources {ORIGIN}) skipped: failed to"
        " import (ModuleNotFoundError: No module named 'ipwatch_example_needs_this_package')"
    ) in text
    assert f"plugin incomplete = ipwatch_example.incomplete (ipwatch.sources {ORIGIN}) skipped:" \
        " lacks ask" in text  # fmt: skip
    assert f"plugin stun = ipwatch_example.fixed (ipwatch.sources {ORIGIN}) ignored: the kind" \
        " is built into ipwatch" in text  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("broken", "failed to import (ModuleNotFoundError: No module named"),
        ("incomplete", "lacks ask"),
    ],
)
def test_a_config_using_a_broken_plugin_gets_a_config_error(
    plugin_path: Path, kind: str, problem: str
) -> None:
    run = cli("config check", plugin_path, FIXED + f'[[source]]\nkind = "{kind}"\n')
    assert run.returncode == 78
    [error] = [line for line in run.stderr.splitlines() if line.startswith("ipwatch: ")]
    assert error.startswith(
        f"ipwatch: /dev/stdin: source[1].kind: '{kind}' comes from the plugin"
        f" ipwatch_example.{kind} (ipwatch.sources {ORIGIN}), which {problem}"
    )
    assert error.endswith("; fix or uninstall that plugin")


def test_built_in_kinds_cannot_be_replaced(plugin_path: Path) -> None:
    config = 'accept = ["127.0.0.0/8"]\n[[source]]\nkind = "stun"\nservers = ["127.0.0.1:9"]\n'
    run = cli("config check", plugin_path, config)
    assert run.returncode == 0 and "rto = " in run.stdout  # the built-in stun's options


def test_a_plugin_updater_is_configured_and_run(plugin_path: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    config = FIXED
    for name, token in (("good", "let-me-in"), ("bad", "wrong-token-42")):
        secret = tmp_path / f"{name}.token"
        secret.write_text(token + "\n")
        secret.chmod(0o600)
        config += f'[[ddns]]\nkind = "journal"\npath = "{journal}"\ntoken_file = "{secret}"\n'
    run = cli("config check", plugin_path, config)
    assert run.returncode == 0, run.stderr
    assert '[[ddns]]\nkind = "journal"\nname = "journal-1"\ntimeout = "10s"' in run.stdout
    script = (
        "import json, sys\n"
        "from ipwatch import config\n"
        "from ipwatch.ddns import run_updaters\n"
        "loaded = config.load('/dev/stdin')\n"
        f"results, memory = run_updaters(loaded.ddns, {{'ipv4': '{PUBLIC}'}}, {{}}, 0.0)\n"
        "print(json.dumps([result.__dict__ for result in results]))\n"
    )
    run = ipwatch("-c", script, plugins=plugin_path, config=config)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        {"name": "journal-1", "kind": "journal", "status": "updated", "message": "journal written"},
        {"name": "journal-2", "kind": "journal", "status": "blocked",
         "message": "the journal refused ********"},
    ]  # fmt: skip
    assert "wrong-token-42" not in run.stderr
    assert json.loads(journal.read_text()) == {"ipv4": PUBLIC}


def test_without_the_plugin_its_kinds_are_unknown(plugin_path: Path) -> None:
    run = cli("config check", None, FIXED)
    assert run.returncode == 78
    assert "source[0].kind: 'fixed' is not a source kind; use one of" in run.stderr
    assert "WARNING" not in run.stderr  # nothing of the plugin leaked into the project's venv


def test_status_reads_no_entry_points(plugin_path: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from ipwatch.cli import main\n"
        f"main(['--state-dir', '{tmp_path}', 'status'])\n"
        "print('ipwatch.plugins' in sys.modules, 'importlib.metadata' in sys.modules)\n"
    )
    run = ipwatch("-c", script, plugins=plugin_path, config="")
    assert run.stdout.splitlines()[-1] == "False False" and "WARNING" not in run.stderr
