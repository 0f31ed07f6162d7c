"""The man pages and the bash completion cover every command, option and config key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ipwatch import cli, manpage, plugins
from tests.support import need

PARSER = cli.build_parser()
COMMANDS = manpage.commands(PARSER)


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def test_every_command_and_option_is_in_ipwatch_8() -> None:
    page = manpage.ipwatch_8()
    assert {name for name, _, _ in COMMANDS} >= {"check", "status", "config check", "hooks test"}
    for name, sub, summary in COMMANDS:
        assert f"\\fB{roff(name)}\\fR" in page, name
        assert roff(summary[1:]) in page, name
        assert roff(" ".join(str(sub.epilog).split())) in " ".join(page.split()), name
        for action in manpage.own_options(sub):
            for flag in action.option_strings:
                assert f"\\fB{roff(flag)}\\fR" in page, (name, flag)
    for action in manpage.global_options(PARSER):
        assert str(action.help) in page.replace("\\-", "-")
    for flag in ("-V", "--version", "--state-dir", "--config"):
        assert f"\\fB{roff(flag)}\\fR" in page


def test_ipwatch_8_has_the_sections_of_a_command_page() -> None:
    page = manpage.ipwatch_8()
    for section in ("SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "SIGNALS", "FILES"):
        assert f"\n.SH {section}\n" in page
    assert "\n.SH EXAMPLES\n" in page


def test_every_config_key_is_described_with_a_default_and_an_example() -> None:
    keys = manpage.config_keys()
    paths = {key.path for key in keys}
    undocumented = sorted(key.path for key in keys if key.path not in manpage.KEYS)
    assert not undocumented, "add these keys to ipwatch.manpage.KEYS"
    assert {"interval", "asterisk.ami.secret_file", "hooks.dir", "target.file"} <= paths
    for group, prefix in ((plugins.SOURCES, "source"), (plugins.UPDATERS, "ddns")):
        for kind in plugins.BUILT_IN[group]:
            assert any(path.startswith(f"{prefix}.{kind}.") for path in paths), kind
    page = manpage.ipwatch_toml_5()
    for key in keys:
        assert key.example, f"{key.path}: no example; give one after | in KEYS"
        assert f"\\fB{roff(key.name)}\\fR (default: " in page
        assert roff(f"{key.name} = {key.example}") in page, key.path


def test_each_table_has_one_section() -> None:
    sections = [line for line in manpage.ipwatch_toml_5().splitlines() if line.startswith(".SH")]
    assert len(sections) == len(set(sections))
    assert sections.index(".SH [asterisk]") < sections.index(".SH [asterisk.ami]")


@pytest.mark.parametrize("page", ["ipwatch.8", "ipwatch.toml.5"])
def test_pages_render_without_warnings(tmp_path: Path, page: str) -> None:
    groff = need("groff", "groff-base")
    manpage.main([str(tmp_path)])
    result = subprocess.run(
        [groff, "-man", "-ww", "-Tutf8", "-z", str(tmp_path / page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


# How bash calls a completion function: the words so far, the index of the one being completed.
_COMPLETE = """
source "$1"
read -ra COMP_WORDS <<< "$2"
[[ $2 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_ipwatch
printf '%s\\n' "${COMPREPLY[@]}"
"""


def complete(tmp_path: Path, line: str) -> set[str]:
    bash = need("bash", "bash")
    script = tmp_path / "ipwatch.bash"
    script.write_text(manpage.bash_completion())
    result = subprocess.run(
        [bash, "-c", _COMPLETE, "bash", str(script), line],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ipwatch ", {"check", "status", "config", "hooks", "demo", "-c", "-V"}),
        ("ipwatch con", {"config"}),
        ("ipwatch -c x.toml config ", {"check"}),
        ("ipwatch hooks test ", {"change", "applied", "error", "degraded", "recovered", "test"}),
        ("ipwatch check --", {"--apply", "--json", "--config", "--state-dir", "--verbose"}),
        ("ipwatch config check -", {"-c", "--config", "-q", "-v"}),
    ],
)
def test_completion(tmp_path: Path, line: str, expected: set[str]) -> None:
    assert complete(tmp_path, line) >= expected


def test_completion_offers_every_command(tmp_path: Path) -> None:
    offered = complete(tmp_path, "ipwatch ")
    assert {name.split()[0] for name, _, _ in COMMANDS} <= offered


def test_completion_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = need("shellcheck", "shellcheck")
    script = tmp_path / "ipwatch.bash"
    script.write_text(manpage.bash_completion())
    result = subprocess.run(
        [shellcheck, "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
