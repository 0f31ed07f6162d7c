"""The global options, before or after the command, as in other Debian tools."""

from __future__ import annotations

import pytest

from ipwatch import __version__
from ipwatch.cli import build_parser, main
from ipwatch.errors import EX_USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "x.toml", "--state-dir", "/s", "-q", "config", "check"],
        ["config", "check", "-c", "x.toml", "--state-dir", "/s", "-q"],
        ["config", "-c", "x.toml", "check", "--state-dir=/s", "--quiet"],
        ["-c", "x.toml", "config", "check", "--state-dir", "/s", "-q"],
    ],
)
def test_global_options_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.state_dir, args.quiet, args.verbose) == ("x.toml", "/s", True, False)


def test_an_option_after_the_command_wins() -> None:
    args = build_parser().parse_args(["-c", "before.toml", "hooks", "test", "-c", "after.toml"])
    assert (args.config, args.event) == ("after.toml", "test")


def test_defaults_without_options() -> None:
    args = build_parser().parse_args(["status"])
    assert (args.config, args.state_dir, args.quiet, args.verbose) == (None, None, False, False)


def test_verbose_and_quiet_exclude_each_other_across_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["-v", "status", "-q"])
    assert stopped.value.code == EX_USAGE
    assert "not allowed with argument -v/--verbose" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([flag])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"ipwatch {__version__}\n"
