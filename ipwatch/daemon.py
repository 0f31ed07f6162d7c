"""`ipwatch run`: rounds on a schedule, reactions to files and signals, systemd notifications.

Wiring only; what to do in a round is rounds.py/decide.py and reconcile.py's business.

Threads: the main thread waits for signals (through a wakeup fd, so handlers do nothing but wake
it) and for the push channels (pushes.py: each listens in a thread of its own and wakes the main
loop through one more fd), and watches the wall clock. APScheduler runs every step — rounds,
reconciling after a file event, reloading the config — on one worker thread, so steps never
overlap, and on a second thread the watchdog ping, which stops when a step makes no progress
for `WATCHDOG_USEC`. watchdog (the package) reports file events from its own thread, which only
schedules a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ipwatch import config as config_file
from ipwatch import reconcile, rounds
from ipwatch.addresses import Family
from ipwatch.asterisk.conf import Limits
from ipwatch.config import Config
from ipwatch.decide import Decision, Tracking, decide
from ipwatch.errors import IpwatchError
from ipwatch.events import Announcer
from ipwatch.health import AsteriskRetry, Liveness, QuorumWatch
from ipwatch.instance import InstanceLock
from ipwatch.notify import Notifier, watchdog_interval
from ipwatch.observe import observe
from ipwatch.pushes import Pushes
from ipwatch.reading import Unfit, read_regular_file
from ipwatch.watch import FileWatcher

log = logging.getLogger("ipwatch")

DEBOUNCE_SECONDS = 0.5  # editors and FreePBX write several files in a burst
CLOCK_CHECK_SECONDS = 1.0
CLOCK_JUMP_SECONDS = 5.0  # a Raspberry Pi without RTC jumps years when NTP syncs at boot
HEARTBEAT_SECONDS = 300.0  # how often the state file is rewritten just to say "still alive"
JITTER = 0.1


class StopRequested(Exception):
    """Raised from inside a long step (a drain) when SIGTERM asks the daemon to stop."""


class Daemon:
    def __init__(self, config: Config, state_dir: Path, notifier: Notifier) -> None:
        self.config = config
        self.state_dir = state_dir
        self.notifier = notifier
        self.writer = reconcile.StateWriter.open(state_dir)
        self.trackings = {
            f: Tracking(rounds.tracking_from(self.writer.saved, f).address) for f in config.families
        }
        self.decisions: dict[Family, Decision] = {}
        self.backoff = rounds.Backoff(config.fast_confirm, config.interval)
        self.announce = Announcer(config, self.writer, self.touch)
        self.stop_requested = threading.Event()
        self.again = False  # a trigger came while a round ran
        self.eager = 0  # rounds still to run `fast_confirm` apart after a trigger
        self.rejection: str | None = None  # why Asterisk refused the confirmed addresses
        self.asterisk_retry = AsteriskRetry()
        self.scheduling = threading.Lock()
        self.ready = False
        self.spacing = 0.0
        self.refused: Mapping[Family, str] | None = None  # addresses Asterisk rejected
        self.restored: dict[Path, str | None] = {}  # what a roll-back left in the files
        self.problem: str | None = None
        self.config_problem: str | None = None
        self.quorum = QuorumWatch()
        self.pushes = Pushes()
        self.liveness = Liveness()
        self.watcher = FileWatcher(self.file_changed)
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler: Any = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1), "watchdog": ThreadPoolExecutor(1)},
            # Late runs (a long drain, a clock jump) run once, never as a burst of catch-ups.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        wakeup, wakeup_writer = socket.socketpair()
        wakeup.setblocking(False)
        wakeup_writer.setblocking(False)
        previous = _catch_signals(wakeup_writer.fileno())
        try:
            self.watcher.start()
            self.watcher.watch(self.watched_files())
            self.record_daemon(running=True, started=True)
            log.info(
                "started: %d sources, %d targets, every %s",
                len(self.config.sources),
                len(self.config.targets),
                _seconds(self.config.interval),
            )
            self.scheduler.start()
            self.schedule_rounds(first_now=True)
            self.schedule_watchdog()
            self.pushes.start(self.config.sources)
            self.main_loop(wakeup)
        finally:
            self.notifier.stopping("stopping")
            with self.scheduling:
                # From now on no thread adds jobs: APScheduler's shutdown holds the job store
                # lock while it waits for the step under way, so an add_job from that step
                # would wait for ever.
                self.stop_requested.set()
            self.scheduler.shutdown(wait=True)  # the step under way finishes first
            self.pushes.close()  # unsubscribes from the router
            self.watcher.stop()
            self.record_daemon(running=False)
            _restore_signals(previous)
            wakeup.close()
            wakeup_writer.close()
        log.info("stopped")
        return 0

    def main_loop(self, wakeup: socket.socket) -> None:
        offset = time.time() - time.monotonic()
        while True:
            waiting = [wakeup.fileno(), self.pushes.fileno()]
            readable, _, _ = select.select(waiting, [], [], CLOCK_CHECK_SECONDS)
            if self.pushes.fileno() in readable:
                self.heard_pushes()
            for number in wakeup.recv(64) if wakeup.fileno() in readable else b"":
                if number in (signal.SIGTERM, signal.SIGINT):
                    log.info("%s: finishing the current step", signal.Signals(number).name)
                    return
                if number == signal.SIGHUP:
                    self.soon(self.reload_config, "reload", 0.0)
                if number == signal.SIGUSR1:
                    log.info("trigger: a round now")
                    self.refused = None
                    self.round_now()
            now_offset = time.time() - time.monotonic()
            if abs(now_offset - offset) > CLOCK_JUMP_SECONDS:
                log.warning(
                    "clock: the wall clock jumped by %+.0f s; rescheduling", now_offset - offset
                )
                self.schedule_rounds(first_now=False)
                self.schedule_watchdog()
            offset = now_offset

    # --- scheduling -----------------------------------------------------------------------

    def schedule_rounds(self, *, first_now: bool) -> None:
        """(Re)start the round job spaced by `self.spacing`, ±10 %."""
        spacing = self.spacing or self.config.interval
        # APScheduler takes next_run_time=None as "paused": leave it out to let the trigger say.
        when = {"next_run_time": _now()} if first_now else {}
        self.add_job(self.round, _spaced(spacing, JITTER), id="round", **when)

    def schedule_watchdog(self) -> None:
        every = watchdog_interval()
        if every is None:
            return
        self.add_job(
            self.ping_watchdog,
            _spaced(every, 0.0),
            id="watchdog",
            executor="watchdog",
            next_run_time=_now(),
        )

    def soon(self, step: Any, name: str, delay: float) -> None:
        """Run `step` once after `delay`; asking again before then starts the delay anew."""
        self.add_job(step, "date", run_date=_now() + timedelta(seconds=delay), id=name)

    def add_job(self, step: Any, trigger: Any, **options: Any) -> None:
        """Schedule `step`, replacing the job of the same id (not once the daemon stops)."""
        with self.scheduling:
            if not self.stop_requested.is_set():
                self.scheduler.add_job(step, trigger, replace_existing=True, **options)

    def round_now(self) -> None:
        # A round under way makes APScheduler skip this run (max_instances): `again` has the
        # round ask for another when it ends.
        self.again = True
        # Something changed (a trigger comes from NetworkManager, dhclient, ppp): look closely
        # for a few rounds, even if the first finds no quorum because a router lags behind.
        self.eager = self.config.confirm + 2
        with self.scheduling:
            if not self.stop_requested.is_set():
                self.scheduler.modify_job("round", next_run_time=_now())

    def heard_pushes(self) -> None:
        """A push is a hint, never a verdict: it starts a round like `ipwatch trigger` does, in
        which every source is asked and quorum and `confirm` decide as always."""
        news = self.pushes.take()
        if news.status_changed:
            # A job of its own each time: APScheduler skips a job whose id is still running,
            # and a change that came while the last record was being written would be lost.
            self.add_job(self.record_pushes, "date", run_date=_now())
        if not news.hints:
            return
        delay = self.pushes.debounce.delay(time.monotonic(), self.config.fast_confirm)
        more = f" (and {news.hints - 1} more)" if news.hints > 1 else ""
        if delay is None:
            log.debug("push: %s%s; a round is already coming", news.reason, more)
        elif delay == 0:
            log.info("push: %s%s; a round now", news.reason, more)
            self.round_now()
        else:
            log.info("push: %s%s; a round in %.1f s", news.reason, more, delay)
            self.soon(self.round_now, "push-round", delay)

    def record_pushes(self) -> None:
        """The push channels' status, in the state file for `ipwatch status`."""
        with self.step("push-status"):
            self.writer.save(self.pushes.recorded(self.writer.current))

    def ping_watchdog(self) -> None:
        """Ping unless a step has shown no progress for longer than systemd allows."""
        stalled = self.liveness.stalled(time.monotonic(), 2 * (watchdog_interval() or 0.0))
        if stalled is None:
            self.notifier.watchdog()
        else:
            log.error("watchdog: no progress for %.0f s; not pinging", stalled)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """One serialised piece of work; its failure is logged and reported, never fatal."""
        self.liveness.begin(time.monotonic())
        try:
            yield
        except StopRequested:
            log.warning("%s: interrupted by the stop; a pending Asterisk action is kept", name)
        except IpwatchError as error:
            self.report_problem(str(error))
        except Exception as error:  # a bug in one step must not end the daemon
            log.exception("%s: internal error", name)
            self.report_problem(f"internal error in {name}: {type(error).__name__}: {error}")
        finally:
            self.liveness.end()

    def progress(self, line: str) -> None:
        self.liveness.progressed(time.monotonic())
        if self.stop_requested.is_set():
            raise StopRequested
        if not self.ready:
            # A first round that drains calls for a restart may take `drain` (15 min): systemd
            # must not time the start out meanwhile (TimeoutStartSec).
            self.ready = True
            self.notifier.ready(line)
        else:
            self.notifier.status(line)

    # --- steps ----------------------------------------------------------------------------

    def round(self) -> None:
        if self.stop_requested.is_set():
            return  # queued before SIGTERM: the stop ends the current step only
        self.again = False
        with self.step("round"):
            decisions = self.observe_and_decide()
            self.decisions = {f: _settled(d) for f, d in decisions.items()}
            state = reconcile.record(self.writer.current, decisions, time.time())
            self.writer.save(self.pushes.recorded(state))
            self.announce_health(decisions)
            self.announce.retry_hooks()
            self.announce.update_ddns()
            self.converge(decisions)
            self.set_problem(self.rejection)
        self.heartbeat()
        self.after_round()

    def observe_and_decide(self) -> dict[Family, Decision]:
        policy = rounds.policy_of(self.config)
        decisions: dict[Family, Decision] = {}
        for family in self.config.families:
            now = time.monotonic()
            due, waiting = self.backoff.split(self.config.sources, family, now)
            asked = observe(due, family)
            self.backoff.record(asked, family, now)
            self.liveness.progressed(time.monotonic())
            decision = decide(family, asked + waiting, self.trackings[family], policy)
            self.trackings[family] = decision.tracking
            decisions[family] = decision
        return decisions

    def touch(self) -> None:
        """Progress without news: the watchdog ping goes on."""
        self.liveness.progressed(time.monotonic())

    def converge(self, decisions: Mapping[Family, Decision]) -> bool:
        """Bring the files (and Asterisk) in line with the confirmed addresses; True if written."""
        addresses = reconcile.confirmed(decisions)
        if not addresses or addresses == self.refused:
            return False
        asking = self.asterisk_retry.due(time.monotonic())
        result = reconcile.converge(
            self.config,
            decisions,
            self.writer,
            write=True,
            announce=self.announce,
            progress=self.progress,
            ask=asking,
        )
        asterisk = result.get("asterisk") or {}
        if asking:
            self.back_off(asterisk)
        if asterisk.get("rolled_back"):
            # Not again for these addresses until something changes, or a rejected reload (or
            # restart) would repeat every round; the restored files are ipwatch's own writing.
            self.refused = addresses
            self.restored = {path: _digest(path) for path in self.watcher.files}
            self.rejection = str(asterisk.get("error"))
        elif result["applied"]:
            self.refused = self.rejection = None
            self.restored = {}
        if result["applied"]:
            self.watcher.watch(self.watched_files())
        return bool(result["applied"])

    def back_off(self, asterisk: Mapping[str, Any]) -> None:
        """Ask an unreachable Asterisk less often the longer it stays away (down for hours must
        not fill the journal); a reload that Asterisk took but does not show is a problem."""
        failed = bool(asterisk.get("error")) and not asterisk.get("rolled_back")
        if asterisk.get("action") == "pending" or failed:
            # A reload that Asterisk took but does not show would be repeated every round too
            # (or a drain and a restart, on versions that need one): back off the same way.
            self.asterisk_retry.postpone(time.monotonic(), self.config.interval)
            if failed and asterisk.get("action") != "pending":
                self.rejection = str(asterisk["error"])
            return
        self.asterisk_retry.clear()
        if asterisk.get("verified"):
            self.rejection = None

    def check_files(self) -> None:
        """After file events: reload a changed config, reconcile changed targets.

        ipwatch's own writes come here too; the plan then finds the files in sync and nothing
        happens. Files as a roll-back left them are not taken for an outside edit either.
        """
        # Files changed while this step ran are looked at again before it ends: their events
        # found the step busy.
        while not self.stop_requested.is_set() and (changed := self.watcher.changed()):
            if Path(os.path.realpath(self.config.path)) in changed:
                log.info("%s changed: reloading the config", self.config.path)
                self.reload_config()
                continue
            if all(self.restored.get(p) == _digest(p) for p in changed):
                continue
            with self.step("reconcile"):
                self.refused = None
                if self.decisions and self.converge(self.decisions):
                    log.info("%s had been changed by someone else", ", ".join(map(str, changed)))
                self.watcher.watch(self.watched_files())

    def reload_config(self) -> None:
        if self.stop_requested.is_set():
            return
        with self.step("reload"):
            self.notifier.reloading("reloading the config")
            try:
                new = config_file.load(self.config.path)
            except IpwatchError as error:
                first = str(error).splitlines()[0]
                log.error("config: %s; still running with the previous config", first)
                self.config_problem = (
                    f"config not reloaded, the previous one stays in force: {first}"
                )
                self.record_daemon(running=True)  # `ipwatch status` warns until a good one loads
            else:
                self.apply_config(new)
            finally:
                self.notifier.ready(self.status_line())

    def apply_config(self, new: Config) -> None:
        self.config = new
        self.trackings = {f: self.trackings.get(f, Tracking()) for f in new.families}
        self.backoff = rounds.Backoff(new.fast_confirm, new.interval)
        self.announce = Announcer(new, self.writer, self.touch)
        self.refused = None
        self.problem = self.config_problem = None
        self.record_daemon(running=True)
        self.spacing = 0.0
        self.schedule_rounds(first_now=True)
        self.watcher.watch(self.watched_files())
        self.pushes.stop()
        self.pushes.start(new.sources)
        log.info("config reloaded from %s", new.path)

    def file_changed(self, path: Path) -> None:
        self.soon(self.check_files, "files", DEBOUNCE_SECONDS)

    # --- reporting ------------------------------------------------------------------------

    def after_round(self) -> None:
        confirming = any(t.candidate for t in self.trackings.values()) or self.eager > 0
        self.eager = max(0, self.eager - 1)
        spacing = self.config.fast_confirm if confirming else self.config.interval
        if spacing != self.spacing:
            self.spacing = spacing
            self.schedule_rounds(first_now=False)
        if self.again:
            # Under another id: the "round" job still counts as running until this returns.
            self.again = False
            self.soon(self.round, "round-again", 0.0)
        status = self.status_line()
        if not self.ready:
            self.ready = True
            self.notifier.ready(status)
            log.info("ready: %s", status)
        else:
            self.notifier.status(status)

    def announce_health(self, decisions: Mapping[Family, Decision]) -> None:
        """`degraded` after `confirm` rounds in a row without a quorum; `recovered` after."""
        for turn, family, decision in self.quorum.observe(decisions, self.config.confirm):
            if turn == "degraded":
                log.warning(
                    "%s: no confirmed address (%s sources agree): %s",
                    family,
                    decision.agreement,
                    rounds.answers(decision),
                )
            else:
                log.info("%s: %s confirmed again", family, decision.winner)
            self.announce(turn, {family: decision})

    def report_problem(self, problem: str) -> None:
        """A step failed with `problem`, which nothing has logged yet: log it (once)."""
        if problem != self.problem:
            log.error("%s", problem)
        self.set_problem(problem)

    def set_problem(self, problem: str | None) -> None:
        """The daemon's current problem (None: none), kept in the state file for `ipwatch status`
        (CRITICAL), and shown in systemd's STATUS. Not logged: whoever found it (reconcile,
        telling Asterisk) has, and a second ERROR line would only repeat it."""
        if problem == self.problem:
            return
        self.problem = problem
        self.record_daemon(running=True)

    def status_line(self) -> str:
        problem = self.problem or self.config_problem
        if problem:
            return f"problem: {problem}"
        parts = []
        for family, decision in self.decisions.items():
            tracking = self.trackings.get(family, decision.tracking)
            text = f"{family} {tracking.address or 'unknown'} ({decision.agreement} agree)"
            if tracking.candidate:
                text += f", confirming {tracking.candidate} {tracking.rounds}/{self.config.confirm}"
            parts.append(text)
        changes = self.writer.current.get("changes") or []
        if changes:
            parts.append(f"last change {changes[-1]['at']}")
        return "; ".join(parts) or "starting"

    def heartbeat(self) -> None:
        if self.liveness.heartbeat_due(time.monotonic(), HEARTBEAT_SECONDS):
            self.record_daemon(running=True)

    def record_daemon(self, *, running: bool, started: bool = False) -> None:
        state = self.writer.current
        entry = dict(state.get("daemon") or {})
        if running:
            # `status` warns when the heartbeat is older than twice this (plus a minute).
            every = max(HEARTBEAT_SECONDS, 1.1 * self.config.interval)
            entry.update(pid=os.getpid(), heartbeat=_stamp(), heartbeat_every=every)
            entry["problem"] = self.problem
            # Apart from `problem`: the daemon still works, on the previous config (WARNING).
            entry["config_problem"] = self.config_problem
            if started:
                entry["started"] = _stamp()
            entry.pop("stopped", None)
        else:
            entry["stopped"] = _stamp()
        self.writer.save({**state, "daemon": entry}, force=True)

    def watched_files(self) -> list[Path]:
        files = [Path(self.config.path)]
        for part in (p for target in self.config.targets for p in reconcile.expand(target)):
            try:
                files += reconcile.load(part, self.config.asterisk.user).tree.documents
            except IpwatchError:
                files.append(Path(part.file))  # reported by the round; watch for a fix
        return files


def run(config: Config, state_dir: Path) -> int:
    """`ipwatch run` until SIGTERM/SIGINT; one daemon per state directory."""
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    )
    lock = InstanceLock.acquire(state_dir)
    try:
        with Notifier() as notifier:
            return Daemon(config, state_dir, notifier).run()
    finally:
        lock.release()


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _catch_signals(wakeup_fd: int) -> tuple[int, dict[signal.Signals, Any]]:
    """Route the signals to `wakeup_fd` (the C handler writes their numbers there)."""
    previous = {number: signal.signal(number, _ignore) for number in _SIGNALS}
    return signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False), previous


def _restore_signals(previous: tuple[int, dict[signal.Signals, Any]]) -> None:
    fd, handlers = previous
    signal.set_wakeup_fd(fd)
    for number, handler in handlers.items():
        signal.signal(number, handler)


def _ignore(number: int, frame: object) -> None:
    """The work happens in the main loop, which the wakeup fd wakes."""


def _spaced(seconds: float, jitter: float) -> Any:
    """A trigger firing `seconds` (± `jitter` of it) after the last run started, by the clock.

    APScheduler's IntervalTrigger counts from its start date instead, so after the wall clock
    jumps years ahead it walks through every missed run time one by one (hundreds of millions,
    gigabytes, minutes of CPU) before coalescing them. Counting from now has nothing to catch up.
    A jump backwards is the main loop's to notice: it reschedules.
    """
    from apscheduler.triggers.base import BaseTrigger

    class Spaced(BaseTrigger):  # type: ignore[misc]
        def get_next_fire_time(
            self, previous_fire_time: datetime | None, now: datetime
        ) -> datetime:
            return now + timedelta(seconds=seconds * random.uniform(1 - jitter, 1 + jitter))

        def __str__(self) -> str:
            return f"every {seconds:g} s"

    return Spaced()


def _settled(decision: Decision) -> Decision:
    """The decision as a later reconcile sees it: the change it confirmed is already announced."""
    return dataclasses.replace(decision, changed=False, previous=None)


def _digest(path: Path) -> str | None:
    # A FIFO or a device put there must neither hang the daemon nor fill its memory.
    try:
        return hashlib.sha256(read_regular_file(path, Limits.file_size)).hexdigest()
    except (OSError, Unfit):
        return None


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _seconds(value: float) -> str:
    return f"{value:g} s"
