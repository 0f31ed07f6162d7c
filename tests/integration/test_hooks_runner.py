"""The hooks.d runner with real hook processes: order, refusals, timeouts, floods, exit statuses."""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ipwatch.config import HooksConfig
from ipwatch.hooks import Event, HookResult, hook_environment, run_hooks, synthetic_event
from tests.support import missing, run_ipwatch

NOBODY = 65534
EVENT = synthetic_event("change", now=1_700_000_000.0)


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hooks.d"
    directory.mkdir(mode=0o755)
    return directory


def write_hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """A POSIX sh hook; `$LOG` in `body` is a file in the hooks dir's parent, for its traces."""
    path = directory / name
    log = directory.parent / "log"
    path.write_text(f"#!/bin/sh\nLOG={log}\n{body}\n")
    path.chmod(mode)
    return path


def log_of(hooks_dir: Path) -> list[str]:
    log = hooks_dir.parent / "log"
    return log.read_text().split() if log.exists() else []


def run(
    hooks_dir: Path,
    event: Event = EVENT,
    timeout: float = 10.0,
    only: set[str] | None = None,
    kill_grace: float = 5.0,
) -> list[HookResult]:
    settings = HooksConfig(str(hooks_dir), timeout)
    return run_hooks(settings, event, "/etc/ipwatch/x.toml", only, kill_grace)


def statuses(results: list[HookResult]) -> dict[str, str]:
    return {result.name: result.status for result in results}


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (this container's init may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def need_root() -> None:
    if os.geteuid() != 0:
        missing("needs root to give a hook another owner")


def test_hooks_run_in_byte_order_of_names(hooks_dir: Path) -> None:
    names = ["b", "10-x", "2-y", "B", "a", "é", "_z"]
    for name in names:
        write_hook(hooks_dir, name, f'echo "{name}" >>"$LOG"')
    results = run(hooks_dir)
    expected = sorted(names, key=os.fsencode)
    assert expected == ["10-x", "2-y", "B", "_z", "a", "b", "é"]
    assert [r.name for r in results] == expected and log_of(hooks_dir) == expected
    assert all(r.status == "ok" and r.returncode == 0 for r in results)


def test_backups_hidden_and_non_executable_files_are_skipped(hooks_dir: Path) -> None:
    skipped = ["x~", "x.dpkg-old", "x.dpkg-dist", "x.rpmnew", "x.rpmsave", ".hidden", ".x.swp"]
    for name in [*skipped, "runs"]:
        write_hook(hooks_dir, name, f'echo "{name}" >>"$LOG"')
    write_hook(hooks_dir, "not-executable", 'echo no >>"$LOG"', mode=0o644)
    (hooks_dir / "a-directory").mkdir()
    (hooks_dir / "dangling").symlink_to(hooks_dir / "nowhere")
    assert statuses(run(hooks_dir)) == {"runs": "ok"}
    assert log_of(hooks_dir) == ["runs"]


def test_a_symlink_runs_its_target_when_the_target_is_safe(hooks_dir: Path) -> None:
    elsewhere = hooks_dir.parent / "elsewhere"  # a sibling, so that $LOG is the same file
    elsewhere.mkdir()
    target = write_hook(elsewhere, "target", 'echo "$0" >>"$LOG"')
    (hooks_dir / "link").symlink_to(target)
    loose = write_hook(elsewhere, "loose", 'echo loose >>"$LOG"', mode=0o777)
    (hooks_dir / "loose-link").symlink_to(loose)
    results = run(hooks_dir)
    assert statuses(results) == {"link": "ok", "loose-link": "refused"}
    assert log_of(hooks_dir) == [str(hooks_dir / "link")]


def test_hooks_others_could_change_are_refused(hooks_dir: Path) -> None:
    need_root()
    write_hook(hooks_dir, "group-writable", 'echo g >>"$LOG"', mode=0o775)
    write_hook(hooks_dir, "world-writable", 'echo w >>"$LOG"', mode=0o757)
    os.chown(write_hook(hooks_dir, "nobodys", 'echo n >>"$LOG"'), NOBODY, NOBODY)
    write_hook(hooks_dir, "safe", 'echo safe >>"$LOG"')
    results = {result.name: result for result in run(hooks_dir)}
    assert statuses(list(results.values())) == {
        "group-writable": "refused",
        "nobodys": "refused",
        "safe": "ok",
        "world-writable": "refused",
    }
    assert log_of(hooks_dir) == ["safe"]
    assert results["group-writable"].reason == (
        f"it is writable by group or others; chmod go-w {hooks_dir / 'group-writable'}"
    )
    nobodys = hooks_dir / "nobodys"
    assert results["nobodys"].reason == (
        f"it is owned by uid {NOBODY}, not root or ipwatch's user; run chown root:root {nobodys}"
        f" && chmod 755 {nobodys} so that only root can change it and ipwatch's user can run it"
    )
    assert "refused: it is writable" in results["world-writable"].describe()


def test_a_directory_others_could_change_refuses_every_hook(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "one", 'echo one >>"$LOG"')
    hooks_dir.chmod(0o777)
    [result] = run(hooks_dir)
    assert result.status == "refused" and log_of(hooks_dir) == []
    assert result.reason == f"directory {hooks_dir} is writable by group or others;" + (
        f" chmod go-w {hooks_dir}"
    )


def test_a_missing_directory_has_no_hooks_and_a_file_is_refused(tmp_path: Path) -> None:
    assert run(tmp_path / "absent") == []
    (tmp_path / "file").write_text("")
    [result] = run(tmp_path / "file")
    assert result.status == "refused" and "cannot be read (Not a directory)" in result.reason


def test_exit_statuses_and_a_failure_does_not_stop_the_others(hooks_dir: Path) -> None:
    write_hook(
        hooks_dir, "10-fails", 'echo "first line" >&2; printf "bad\\033[31m news\\n" >&2; exit 3'
    )
    write_hook(hooks_dir, "20-later", "exit 75")
    write_hook(hooks_dir, "30-ok", 'echo out; echo ok >>"$LOG"')
    write_hook(hooks_dir, "40-crashes", "kill -SEGV $$")
    (hooks_dir / "50-no-shebang").write_text("echo hi\n")
    (hooks_dir / "50-no-shebang").chmod(0o755)
    results = {result.name: result for result in run(hooks_dir)}
    assert statuses(list(results.values())) == {
        "10-fails": "failed",
        "20-later": "tempfail",
        "30-ok": "ok",
        "40-crashes": "failed",
        "50-no-shebang": "failed",
    }
    assert log_of(hooks_dir) == ["ok"]
    assert results["10-fails"].returncode == 3
    assert results["10-fails"].stderr_tail == "first line | bad [31m news"
    assert results["20-later"].returncode == 75
    assert results["30-ok"].stderr_tail == ""
    assert results["40-crashes"].describe().startswith("40-crashes: failed, killed by signal 11")
    assert results["50-no-shebang"].reason == (
        "cannot start: Exec format error (does it start with a #! line?)"
    )


def test_only_runs_the_named_hooks(hooks_dir: Path) -> None:
    for name in ("a", "b", "c"):
        write_hook(hooks_dir, name, f'echo "{name}" >>"$LOG"')
    assert [r.name for r in run(hooks_dir, only={"c", "a"})] == ["a", "c"]
    assert log_of(hooks_dir) == ["a", "c"]


def test_argv_stdin_environment_and_directory(
    hooks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/ipwatch.service")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    seen = tmp_path / "seen.json"
    hook = hooks_dir / "report"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "report = {'argv': sys.argv, 'stdin': sys.stdin.read(), 'cwd': os.getcwd(),\n"
        "          'environ': dict(os.environ)}\n"
        f"open({str(seen)!r}, 'w').write(json.dumps(report))\n"
    )
    hook.chmod(0o755)
    event = Event(
        "error",
        "ipv4",
        old_ipv4="203.0.113.5",
        new_ipv4="203.0.113.7",
        sources=(("stun-1", "203.0.113.7"), ("dns-1", "203.0.113.7")),
        error="pjsip.conf: Asterisk did not take 203.0.113.7; rolled back",
    )
    assert statuses(run(hooks_dir, event)) == {"report": "ok"}
    report = json.loads(seen.read_text())
    assert report["argv"] == [str(hook), "error"]
    assert report["stdin"] == event.to_json()
    assert report["cwd"] == str(hooks_dir)
    assert report["environ"] == hook_environment(event, "/etc/ipwatch/x.toml")
    assert report["environ"]["IPWATCH_ERROR"] == event.error
    assert report["environ"]["IPWATCH_SOURCES"] == "stun-1=203.0.113.7 dns-1=203.0.113.7"
    assert (
        report["environ"]["LANG"] == "C.UTF-8" and report["environ"]["PATH"] == os.environ["PATH"]
    )
    assert not {"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "SECRET_TOKEN"} & set(report["environ"])


def test_at_the_timeout_the_whole_process_group_is_killed(hooks_dir: Path) -> None:
    # The child ignores SIGTERM (an ignored signal stays ignored across exec): only SIGKILL ends it.
    write_hook(
        hooks_dir,
        "10-slow",
        """(trap '' TERM; exec sleep 300) &
echo $! >>"$LOG"
trap '' TERM
sleep 300""",
    )
    write_hook(hooks_dir, "20-next", 'echo next >>"$LOG"')
    started = time.monotonic()
    results = run(hooks_dir, timeout=0.5, kill_grace=0.3)
    elapsed = time.monotonic() - started
    [child, after] = log_of(hooks_dir)
    assert not running(int(child)) and after == "next"
    slow = results[0]
    assert (slow.status, slow.returncode) == ("timeout", None)
    assert slow.reason == "timed out after 0.5 s; its process group was killed"
    assert 0.8 <= slow.seconds < 3 and elapsed < 4


def test_processes_a_hook_leaves_behind_are_ended(hooks_dir: Path) -> None:
    write_hook(
        hooks_dir,
        "forks",
        """(trap '' TERM; exec sleep 300) &
echo $! >>"$LOG"
exit 0""",
    )
    [result] = run(hooks_dir, kill_grace=0.2)
    [child] = log_of(hooks_dir)
    assert not running(int(child))
    assert result.status == "ok" and result.reason == "it left processes behind; they were ended"
    assert result.seconds < 3


def test_a_flood_of_output_neither_hangs_nor_fills_memory(hooks_dir: Path) -> None:
    fifty_mb = 50 * 1024 * 1024
    write_hook(
        hooks_dir,
        "flood",
        f"""head -c {fifty_mb} /dev/zero | tr '\\0' o
head -c {fifty_mb} /dev/zero | tr '\\0' e >&2
printf '\\nlast words\\n' >&2
exit 1""",
    )
    tracemalloc.start()
    try:
        [result] = run(hooks_dir, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "failed" and result.seconds < 30
    assert result.stderr_tail.endswith("eeee | last words")
    assert len(result.stderr_tail) <= 4096
    assert peak < 1024 * 1024, f"{peak} bytes allocated while draining 100 MB"


def test_a_hook_that_does_not_read_stdin_is_fine(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "closes-stdin", "exec 0<&-; exit 0")
    assert statuses(run(hooks_dir)) == {"closes-stdin": "ok"}


def write_config(path: Path, hooks_dir: Path, timeout: str = "10s") -> Path:
    path.write_text(
        f'[hooks]\ndir = "{hooks_dir}"\ntimeout = "{timeout}"\n\n'
        '[[source]]\nkind = "stun"\nservers = ["127.0.0.1:3478"]\n'
    )
    return path


def test_cli_hooks_test_exit_statuses(hooks_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ipwatch.toml", hooks_dir)
    empty = run_ipwatch("hooks", "test", config=config)
    assert (empty.returncode, empty.stdout) == (0, f"no hooks found in {hooks_dir}\n")

    write_hook(hooks_dir, "10-ok", 'echo "$1 $IPWATCH_NEW_ADDRESS" >>"$LOG"')
    ok = run_ipwatch("hooks", "test", config=config)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("10-ok: ok (") and len(ok.stdout.splitlines()) == 1
    assert log_of(hooks_dir) == ["test", "203.0.113.7"]

    write_hook(hooks_dir, "20-fails", 'echo "sendmail: not found" >&2; exit 1')
    failed = run_ipwatch("hooks", "test", "applied", config=config)
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[0].startswith("10-ok: ok (")
    assert lines[1].startswith("20-fails: failed, exit 1 (")
    assert lines[1].endswith("): sendmail: not found")
    assert "WARNING hook 20-fails: failed, exit 1" in failed.stderr
    assert log_of(hooks_dir)[2:] == ["applied", "203.0.113.7"]

    (hooks_dir / "20-fails").chmod(0o775)
    refused = run_ipwatch("hooks", "test", config=config)
    assert refused.returncode == 1
    assert "20-fails: refused: it is writable by group or others" in refused.stdout

    bad = run_ipwatch("hooks", "test", "reboot", config=config)
    assert bad.returncode == 64 and "invalid choice: 'reboot'" in bad.stderr
