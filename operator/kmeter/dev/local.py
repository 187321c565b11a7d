"""The local side of ``kmeter dev``: its logs, the folds over them, quotas, and manifest reloads.

:class:`LocalBackend` owns, per namespace with Meters, four local logs (:mod:`.log`) under
``DATA_DIR/<namespace>/`` — ``events``, ``dead-letters``, ``decisions``, ``notifications`` —
each written through a :class:`~.transport.LogWriter`; the :class:`~.pipeline.Pipeline` that
folds the events; and the :class:`~.quotas.LocalQuotas`.

**Loading** (:meth:`LocalBackend.load`), at start and after every change of the manifests:
with every writer's lock held, so the logs stand still, the pipeline and the quotas start over
with the new Meters and Quotas; per namespace the dead-letter marks and the quota decisions
are read back, and the event log is folded again from its first record; then the proxy's quota
table gets the policies and decisions. Events that arrive meanwhile wait in the writers' queues
and are folded by the new pipeline once the locks are released: nothing is lost or counted
twice across a reload. The folding runs on the event loop (requests wait while the log is
folded again: about 8 s per 200,000 events and two Meters on a 2-core machine).

**Watching** (:meth:`LocalBackend.watch`): the manifest folder's files are read every second;
when their content changed they are checked as at start. Valid: loaded as above, and the
changes are printed. Invalid: every problem is printed and the previous manifests stay in
force, as the API server would refuse a bad ``kubectl apply``. A Meter in a namespace new to
this run gets its logs opened. The proxy's own settings (its event type and namespace) are
those of the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from kmeter.dev.log import EventLog, LogDamaged, LogLocked, LogRecord
from kmeter.dev.manifests import SUFFIXES, ManifestError, Manifests, load_manifests
from kmeter.dev.pipeline import Pipeline
from kmeter.dev.quotas import Apply, LocalQuotas
from kmeter.dev.transport import LogWriter

__all__ = ["LocalBackend", "StartError"]

Out = Callable[[str], None]
WATCH_SECONDS = 1.0


class StartError(Exception):
    """Something on this machine is in the way: a port, the data folder (exit status 1)."""


def open_log(folder: Path, fsync: bool) -> EventLog:
    """Open a local log, with a message a person can act on when it cannot be."""
    try:
        return EventLog.open(folder, fsync=fsync)
    except LogLocked:
        raise StartError(
            f"{folder} is in use by another kmeter dev; stop it or give another --data-dir"
        ) from None
    except LogDamaged as error:
        raise StartError(str(error)) from None
    except OSError as error:
        raise StartError(f"{folder}: cannot open the log: {error}") from None


def manifests_digest(folder: Path) -> str:
    """A digest of the names and contents of the folder's manifest files."""
    digest = hashlib.sha256()
    with contextlib.suppress(OSError):
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass
class _Namespace:
    events: LogWriter
    dead: LogWriter
    decisions: LogWriter
    notifications: LogWriter

    def writers(self) -> list[LogWriter]:
        return [self.events, self.dead, self.decisions, self.notifications]


@dataclass
class LocalBackend:
    """See the module docstring."""

    data_dir: Path
    manifests: Manifests
    out: Out
    clock_offset: timedelta = timedelta(0)
    fsync: bool = True
    namespaces: dict[str, _Namespace] = field(default_factory=dict)
    table: tuple[str, Apply] | None = None
    """The proxy's namespace and its quota table's ``apply``, once attached."""

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(
            self.manifests.meters,
            dead_letters=lambda ns, records: self.namespaces[ns].dead.append_nowait(records),
        )
        self.quotas = LocalQuotas(
            self.manifests,
            decisions_log=lambda ns, records: self.namespaces[ns].decisions.append_nowait(records),
            notifications_log=lambda ns, records: self.namespaces[ns].notifications.append_nowait(
                records
            ),
            out=self.out,
            clock_offset=self.clock_offset,
        )
        self.pipeline.observers.append(self.quotas.observe)

    @property
    def event_writers(self) -> dict[str, LogWriter]:
        return {name: ns.events for name, ns in self.namespaces.items()}

    def _open(self, namespace: str) -> None:
        if namespace in self.namespaces:
            return
        folder = self.data_dir / namespace
        opened: list[EventLog] = []
        try:
            for part in ("events", "dead-letters", "decisions", "notifications"):
                opened.append(open_log(folder / part, self.fsync))
        except BaseException:
            for log in opened:
                log.close()
            raise
        events, dead, decisions, notifications = opened
        if events.truncated_bytes:
            self.out(
                f"  recovered {folder / 'events'}: cut {events.truncated_bytes} bytes of a "
                "write a crash interrupted"
            )
        entry = _Namespace(
            LogWriter(events, functools.partial(self._fold, namespace)),
            LogWriter(dead, _ignore),
            LogWriter(decisions, _ignore),
            LogWriter(notifications, _ignore),
        )
        for writer in entry.writers():
            writer.start()
        self.namespaces[namespace] = entry

    def _fold(self, namespace: str, records: list[LogRecord]) -> None:
        self.pipeline.fold(namespace, records)

    async def load(self, manifests: Manifests) -> None:
        """Fold every log again with ``manifests``; see the module docstring."""
        for namespace in manifests.namespaces:
            self._open(namespace)
        async with contextlib.AsyncExitStack() as stack:
            for entry in self.namespaces.values():
                for writer in entry.writers():
                    await stack.enter_async_context(writer.lock)
            self.manifests = manifests
            self.pipeline.reset(manifests.meters)
            self.quotas.reset(manifests)
            for namespace, entry in self.namespaces.items():
                self.pipeline.restore_marks(namespace, entry.dead.log.read())
                self.quotas.restore(namespace, [r.value for r in entry.decisions.log.read()])
                began = time.perf_counter()
                replayed = self.pipeline.replay(namespace, entry.events.log.read())
                if replayed:
                    self.out(
                        f"  folded the {replayed} events of namespace {namespace} in "
                        f"{time.perf_counter() - began:.2f} s"
                    )
            if self.table is not None:
                self.quotas.start(self.pipeline, *self.table)

    def attach(self, namespace: str, table: Apply) -> None:
        """Give the proxy's quota table its policies and decisions, and keep it up to date."""
        self.table = (namespace, table)
        self.quotas.start(self.pipeline, namespace, table)

    async def watch(self, folder: Path, default_namespace: str) -> None:
        """Reload the manifests whenever the folder's files change (runs until cancelled)."""
        seen = await asyncio.to_thread(manifests_digest, folder)
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            digest = await asyncio.to_thread(manifests_digest, folder)
            if digest == seen:
                continue
            seen = digest
            try:
                manifests = await asyncio.to_thread(load_manifests, folder, default_namespace)
            except ManifestError as error:
                self.out(
                    "kmeter dev: the manifests changed but are invalid; the previous ones stay "
                    "in force:\n  " + "\n  ".join(error.problems)
                )
                continue
            before = _names(self.manifests)
            try:
                await self.load(manifests)
            except StartError as error:
                self.out(f"kmeter dev: the manifests changed but cannot be loaded: {error}")
                continue
            after = _names(manifests)
            changes = [f"+{name}" for name in sorted(after - before)]
            changes += [f"-{name}" for name in sorted(before - after)]
            self.out(
                "kmeter dev: manifests reloaded"
                + (f" ({', '.join(changes)})" if changes else " (changed in place)")
            )

    async def close(self) -> None:
        """Write what is queued, fsync and close every log."""
        for entry in self.namespaces.values():
            for writer in entry.writers():
                await writer.close()


def _ignore(_: list[LogRecord]) -> None:
    """Side logs are only written to."""


def _names(manifests: Manifests) -> set[str]:
    return {f"Meter {m.namespace}/{m.name}" for m in manifests.meters} | {
        f"Quota {q.namespace}/{q.name}" for q in manifests.quotas
    }
