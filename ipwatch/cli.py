"""The `ipwatch` command: arguments, exit statuses, human or JSON output. No logic of its own.

Each command imports what it needs when it runs, so `ipwatch status` loads neither dnspython nor
APScheduler and answers fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ipwatch import __version__
from ipwatch.errors import EX_USAGE, IpwatchError

if TYPE_CHECKING:
    from ipwatch.config import Config

EX_SOFTWARE = 70
EX_SIGPIPE = 128 + 13  # what a shell reports for a command ended by SIGPIPE
# ipwatch.hooks.EVENTS, spelt out so that building the parser imports nothing more
HOOK_EVENTS = ("change", "applied", "error", "degraded", "recovered", "test")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad usage exits 64 (EX_USAGE), not argparse's 2, which means "no confirmed address"."""
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


class _CommandParser(_Parser):
    """A command's parser: the global options are accepted after the command too (`ipwatch
    config check -c x.toml`), as Debian's tools do."""

    def __init__(self, **kwargs: Any) -> None:
        after_command = argparse.ArgumentParser(add_help=False)
        _add_global_options(after_command, default=argparse.SUPPRESS)
        super().__init__(parents=[after_command], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ipwatch",
        description="Keep Asterisk's public address right when the router's public IP changes.",
        epilog="Exit statuses: see `ipwatch COMMAND --help`; 64 bad usage, 78 config error.",
    )
    _add_global_options(parser, default=None)
    parser.add_argument("-V", "--version", action="version", version=f"ipwatch {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    check = _command(
        commands,
        "check",
        _check,
        "observe, confirm and compare with the targets once",
        "In sync means the files say the confirmed address and Asterisk runs it. Exit: 0 in sync"
        " (or applied and verified), 1 drift found and not applied (files, Asterisk or a host"
        " name behind), 2 no confirmed address, 3 apply or verify failed (files rolled back),"
        " the reload is pending, or Asterisk refused ipwatch or could not be asked.",
        json=True,
    )
    check.add_argument(
        "--apply", action="store_true", help="also rewrite the target files (atomically, backed up)"
    )
    _command(
        commands,
        "plan",
        _plan,
        "show what `check --apply` would change, as a unified diff",
        "Exit: as check (0 in sync, 1 changes to make, 2 no confirmed address). Logs only"
        " warnings and errors (the diff is the answer), everything with -v.",
        json=True,
        info_logs=False,
    )
    _command(
        commands,
        "sources",
        _sources,
        "ask each source once and show its answer (diagnosis)",
        "Exit: 0 if any source answered, 2 if none did.",
        json=True,
    )
    _command(
        commands,
        "status",
        _status,
        "show what the state file says (Nagios exit statuses)",
        "Exit: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        json=True,
        needs_config=False,
    )
    _command(
        commands,
        "run",
        _run,
        "run the daemon in the foreground (systemd Type=notify)",
        "Rounds every `interval` (`fast_confirm` while confirming a change); target files and"
        " the config are watched. Signals: SIGHUP reloads the config, SIGUSR1 runs a round now,"
        " SIGTERM/SIGINT finish the current step and exit. Exit: 0 after SIGTERM/SIGINT, 3 when"
        " another daemon uses the state directory, 78 config error.",
    )
    _command(
        commands,
        "trigger",
        _trigger,
        "ask the running daemon for a round now (SIGUSR1)",
        "For NetworkManager, dhclient and ppp hooks (see contrib/). Exit: 0 sent, 3 no daemon.",
        needs_config=False,
    )
    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(
        dest="config_command", metavar="ACTION", required=True, parser_class=_CommandParser
    )
    _command(
        config_commands,
        "check",
        _config_check,
        "validate the config and print it with defaults filled in and secrets masked",
        "Also reads the target files (nothing is written) and the secret files. Exit: 0 valid,"
        " 78 invalid.",
    )
    hooks = commands.add_parser("hooks", help="hook commands")
    hooks_commands = hooks.add_subparsers(
        dest="hooks_command", metavar="ACTION", required=True, parser_class=_CommandParser
    )
    hooks_test = _command(
        hooks_commands,
        "test",
        _hooks_test,
        "run every hook in hooks.dir with a synthetic event (documentation addresses)",
        "Exit: 0 all hooks succeeded (or hooks.dir holds none), 1 otherwise (hooks.dir missing"
        " too).",
    )
    hooks_test.add_argument(
        "event",
        nargs="?",
        default="test",
        choices=HOOK_EVENTS,
        help="the event to simulate (default: test)",
    )
    doctor = _command(
        commands,
        "doctor",
        _doctor,
        "audit the NAT setup of the targets: what stands between a right address and calls",
        "Reads the targets' files, the state file (or asks the sources once), and what Asterisk"
        " runs; writes nothing. Exit: 0 nothing above info, 1 warnings, 2 errors.",
        json=True,
        info_logs=False,
    )
    doctor.add_argument(
        "--plan", action="store_true", help="print the safe fixes as a unified diff; writes nothing"
    )
    _command(
        commands,
        "demo",
        _demo,
        "a self-contained offline demonstration on loopback",
        "Exit: 0.",
        needs_config=False,
    )
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options of every command; `default` SUPPRESS leaves an unset one out of the result,
    so after a command it does not undo the same option given before it."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        default=default,
        help="config file (default: $IPWATCH_CONFIG or /etc/ipwatch/ipwatch.toml)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default,
        help="state directory (default: $IPWATCH_STATE_DIR, $STATE_DIRECTORY, /var/lib/ipwatch)",
    )
    loudness = parser.add_mutually_exclusive_group()
    flag = False if default is None else default
    loudness.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=flag,
        help="debug logs, tracebacks on errors",
    )
    loudness.add_argument(
        "-q", "--quiet", action="store_true", default=flag, help="log warnings and errors only"
    )


Handler = Callable[[argparse.Namespace, "Config | None"], int]


def _command(
    commands: argparse._SubParsersAction[Any],
    name: str,
    handler: Handler,
    summary: str,
    exits: str,
    *,
    json: bool = False,
    needs_config: bool = True,
    info_logs: bool = True,
) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=exits
    )
    if json:
        command.add_argument("--json", action="store_true", help="print one JSON object")
    command.set_defaults(handler=handler, needs_config=needs_config, info_logs=info_logs)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:  # one before the command, the other after it
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    needs_config = getattr(args, "needs_config", True)
    if needs_config:  # `status` and `demo` log nothing; sparing `logging` keeps status fast
        _setup_logging(args.verbose, args.quiet or not getattr(args, "info_logs", True))
    try:
        config = _load_config(args) if needs_config else None
        handler: Handler = args.handler
        status = handler(args, config)
        sys.stdout.flush()  # here, where a closed pipe can still be told apart
        return status
    except IpwatchError as error:
        _report(error, str(error), args.verbose)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as error:
        hint = "" if args.verbose else "; run with -v for details"
        _report(error, f"internal error ({type(error).__name__}: {error}){hint}", args.verbose)
        return EX_SOFTWARE


def _report(error: BaseException, message: str, verbose: bool) -> None:
    """Print `message` once; with `verbose` the traceback before it, and nothing else changes
    (the exit status stays what systemd's RestartPreventExitStatus= and Nagios expect)."""
    if verbose:
        import traceback

        explained = traceback.TracebackException.from_exception(error)
        lines = list(explained.format())
        # The last lines repeat the message, which follows in our own words.
        print(
            "".join(lines[: -len(list(explained.format_exception_only()))]), end="", file=sys.stderr
        )
    for line in message.splitlines():
        print(f"ipwatch: {line}", file=sys.stderr)


def _stdout_closed() -> int:
    """The reader of our output went away (`ipwatch status | head -1`): end quietly, as the
    Python docs' "Note on SIGPIPE" recommends, with the status a shell shows for SIGPIPE."""
    # Python flushes stdout again at exit; into /dev/null that cannot fail a second time.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EX_SIGPIPE


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from ipwatch import logs

    logs.setup(verbose, quiet)


def _load_config(args: argparse.Namespace) -> Config:
    from ipwatch import config

    return config.load(args.config or config.default_path())


def _state_dir(args: argparse.Namespace) -> Path:
    from ipwatch.state import default_dir

    return Path(args.state_dir or default_dir())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _check(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import reconcile, report
    from ipwatch.events import Announcer

    assert config is not None
    writer = reconcile.StateWriter.open(_state_dir(args))
    if not args.apply:
        result = reconcile.check(config, writer, write=False)
    else:
        _refuse_beside_the_daemon(_state_dir(args))
        _refuse_a_foreign_state_dir(_state_dir(args))
        announcer = Announcer(config, writer)
        announcer.retry_hooks()  # owed by an earlier run
        result = reconcile.check(config, writer, write=True, announce=announcer)
        announcer.update_ddns()  # a failed update of an earlier run may be due again
    print(json.dumps(result, indent=2) if args.json else report.format_check(result))
    return report.check_exit_status(result)


def _refuse_a_foreign_state_dir(state_dir: Path) -> None:
    """Before anything is announced or written: root must not write into a directory another
    user controls (the backups and state would go through links that user planted)."""
    import os

    from ipwatch.errors import StateError
    from ipwatch.files import open_state_directory

    try:
        os.close(open_state_directory(state_dir))
    except OSError as error:
        raise StateError(
            f"{state_dir}: cannot be opened ({error.strerror}); pass --state-dir or fix its"
            " permissions"
        ) from None


def _refuse_beside_the_daemon(state_dir: Path) -> None:
    """Two writers of the same files and the same Asterisk would race; the daemon owns them."""
    from ipwatch.errors import InstanceError
    from ipwatch.instance import running_pid

    pid = running_pid(state_dir)
    if pid is not None:
        raise InstanceError(
            f"`ipwatch run` (pid {pid}) manages these files; use `ipwatch trigger` to make it"
            " check now, or `ipwatch check` without --apply"
        )


def _plan(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import reconcile, report

    assert config is not None
    result = reconcile.check(config, reconcile.StateWriter.open(_state_dir(args)), write=False)
    if args.json:
        _print_json(result)
    else:
        print(report.format_plan(result), end="")
    return report.check_exit_status(result)


def _sources(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import report, rounds
    from ipwatch.decide import Tracking, decide
    from ipwatch.observe import observe

    assert config is not None
    policy = rounds.policy_of(config)
    decisions = {
        f: decide(f, observe(config.sources, f), Tracking(), policy) for f in config.families
    }
    result = report.sources_result(decisions)
    if args.json:
        _print_json(result)
    else:
        print(report.format_sources_result(result))
    return 0 if report.any_answered(result) else 2


def _status(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import state as state_file
    from ipwatch import status

    state_dir = _state_dir(args)
    try:
        saved = state_file.load(state_dir)
    except IpwatchError as error:
        print(f"IPWATCH UNKNOWN - {error}")
        return status.UNKNOWN
    result = status.evaluate(saved, str(state_dir))
    if args.json:
        _print_json(result)
    else:
        print(status.format_status(result))
    return int(result["exit"])


def _run(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import daemon

    assert config is not None
    return daemon.run(config, _state_dir(args))


def _trigger(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import instance

    pid = instance.trigger(_state_dir(args))
    if not args.quiet:
        print(f"asked the daemon (pid {pid}) for a round now")
    return 0


def _config_check(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch import preflight
    from ipwatch.config import render
    from ipwatch.errors import ConfigError

    assert config is not None
    problems = preflight.problems(config)
    if problems:
        raise ConfigError(problems)
    print(f"# {config.path}: valid")
    print(render(config), end="")
    return 0


def _hooks_test(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch.hooks import run_hooks, synthetic_event

    assert config is not None
    if not os.path.exists(config.hooks.dir):
        # The daemon takes a missing directory for "no hooks"; a test of them must not pass.
        raise IpwatchError(
            f"{config.path}: hooks.dir: {config.hooks.dir} does not exist; create it"
            f" (install -d -m 755 {config.hooks.dir}) or point hooks.dir at your hooks"
        )
    results = run_hooks(config.hooks, synthetic_event(args.event), config.path)
    if not results:
        print(f"no hooks found in {config.hooks.dir}")
    for result in results:
        print(result.describe())
    return 0 if all(result.status == "ok" for result in results) else 1


def _doctor(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch.doctor import audit, findings

    assert config is not None
    report = audit.run(config, _state_dir(args), plan=args.plan)
    status = findings.exit_status(report.findings)
    if args.json:
        print(findings.json_text(report.findings, report.diff if args.plan else None), end="")
    elif args.plan:
        print(report.diff or "# no safe fixes to make", end="" if report.diff else "\n")
    else:
        print(findings.format_findings(report.findings), end="")
    return status


def _demo(args: argparse.Namespace, config: Config | None) -> int:
    from ipwatch.demo import run_demo

    return run_demo()
