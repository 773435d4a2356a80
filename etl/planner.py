"""What each partition of a run needs, decided once: `etl run`, `etl plan` and the Dagster assets
all read :func:`plan_partitions`.

The rules: every day of the range (from its start again with ``restart``); the complete days
of the lookback before the range whose count changed since (late rows); the undated rows. The
complete days are counted in one query. A run without a range settles the complete days before
the lookback of its last day without counting them: the scheduled run costs its days, not the
history (late rows older than ``late_rows.lookback_days`` are not looked for). A
partition is read as new, resumed after its cursor, re-checked, or skipped (complete and
unchanged, or never to be sent). A partition that a run would refuse to touch says why
(``refused``): a mapping that changed what its events hold since some of its rows were sent, or
a lease held by another run (a partition beside the range that another run holds is left to it
instead).
"""

from __future__ import annotations

from datetime import date

from etl.destination import Destination
from etl.errors import LeaseHeldError, MappingChangedError
from etl.fingerprint import changed_settings
from etl.partition import PartitionTask
from etl.source import Source
from etl.state import Checkpoint
from etl.state.leases import Leases
from etl.statuses import Mode, PartitionStatus
from etl.windows import UNDATED


def plan_task(
    source: Source, day: date | None, cp: Checkpoint | None, count: int | None = None
) -> PartitionTask:
    """How a partition is read, from its checkpoint (and, if complete, ``count``: its rows
    counted already, counted now when None)."""
    if cp is None:
        return PartitionTask(day, Mode.NEW)
    if cp.status == PartitionStatus.SKIPPED:
        return PartitionTask(day, Mode.SKIP, cp)
    if cp.status == PartitionStatus.COMPLETE:
        if cp.log_purged_at is not None:
            return PartitionTask(day, Mode.SKIP, cp)
        if (source.count_partition(day) if count is None else count) == cp.present:
            return PartitionTask(day, Mode.SKIP, cp)
        return PartitionTask(day, Mode.RECHECK, cp)
    if cp.status in (PartitionStatus.RECHECKING, PartitionStatus.UNBALANCED):
        return PartitionTask(day, Mode.RECHECK, cp)
    return PartitionTask(day, Mode.RESUME, cp)


def plan_partitions(
    target: Destination,
    source: Source,
    days: list[date],
    earlier: list[date],
    checkpoints: dict[str, Checkpoint],
    *,
    restart: bool = False,
    leases: Leases | None = None,
    settled_before: date | None = None,
) -> list[PartitionTask]:
    """Every partition a run of ``days`` (and the lookback days ``earlier``) goes through, in
    the order it reads them, each counted once; refused ones carry the error the run raises.
    Complete days before ``settled_before`` are left alone without a count."""
    tasks: list[PartitionTask] = []
    complete = {
        day: cp
        for day in [*earlier, *([] if restart else days)]
        if (cp := checkpoints.get(day.isoformat())) is not None
        and cp.status == PartitionStatus.COMPLETE
    }
    settled = {d for d in complete if settled_before is not None and d < settled_before}
    counts = source.count_days(
        [d for d, cp in complete.items() if d not in settled and cp.log_purged_at is None]
    )

    def task_of(day: date) -> PartitionTask:
        cp = checkpoints.get(day.isoformat())
        if day in settled:
            return PartitionTask(day, Mode.SKIP, cp)
        return plan_task(source, day, cp, counts.get(day))

    for day in earlier:  # only what was sent already, and changed since
        task = task_of(day) if day.isoformat() in checkpoints else None
        if task is not None and task.mode is Mode.RECHECK:
            task.beside_range = True
            tasks.append(task)
    for day in days:
        if restart:
            tasks.append(PartitionTask(day, Mode.NEW, restart=True))
        else:
            tasks.append(task_of(day))
    undated = plan_task(source, None, checkpoints.get(UNDATED))
    undated.beside_range = True
    tasks.append(undated)
    held = leases.held_by_others(target.name) if leases is not None else {}
    for task in tasks:
        task.report.destination = target.name
        _judge(target, task, held)
    return tasks


def _judge(target: Destination, task: PartitionTask, leases: dict[str, LeaseHeldError]) -> None:
    """Whether a run may go through the partition (``leases``: those other runs hold):
    ``refused`` if not, or, for one beside the range that another run holds, ``note`` and
    nothing to do."""
    if task.mode is Mode.SKIP:
        return
    cp = task.checkpoint
    if cp is not None and cp.rows_read > 0 and not task.restart:
        now = (target.fingerprint, target.settings)
        changed = changed_settings(cp.fingerprint, cp.settings, now, target.legacy_fingerprint)
        if changed:
            task.refused = mapping_changed(target.name, cp, changed)
            return
    held = leases.get(task.key)
    if held is None:
        return
    if task.beside_range:
        task.mode = Mode.SKIP
        task.note = f"{target.name}: {held}: left to that run"
    else:
        task.refused = held


def mapping_changed(destination: str, cp: Checkpoint, changed: list[str]) -> MappingChangedError:
    return MappingChangedError(
        f"destination {destination!r}, partition {cp.partition}: {', '.join(changed)} changed "
        f"since {cp.rows_read} rows of this partition were processed, which changes the events "
        f"sent; rerun with --restart to send this partition again from its start (vendors "
        "without dedup then receive its events twice), or restore the setting"
    )


def refuse(tasks: list[PartitionTask]) -> None:
    """Raise the first refusal among the tasks: a run does not start a destination that would
    have to stop half-way."""
    for task in tasks:
        if task.refused is not None:
            raise task.refused
