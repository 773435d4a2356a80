"""The words the state tables and the reports use for a partition, a batch and a run's way
through a partition: one enum each, whose values are the strings stored (unchanged)."""

from __future__ import annotations

from enum import StrEnum


class PartitionStatus(StrEnum):
    """A partition's status in ``<prefix>checkpoints``."""

    RUNNING = "running"  # being sent (or a run died while sending it)
    RECHECKING = "rechecking"  # being re-checked for late rows
    COMPLETE = "complete"  # every row accounted for, and the source holds as many
    SKIPPED = "skipped"  # never sent, on purpose (older than the vendor accepts)
    UNBALANCED = "unbalanced"  # the counts did not balance, even after a re-check
    INTERRUPTED = "interrupted"  # a run stopped (Ctrl-C, SIGTERM) before it was done
    FAILED = "failed"  # the destination stopped (a refused key, a wrong URL) before it was done


DONE = frozenset({PartitionStatus.COMPLETE, PartitionStatus.SKIPPED})


def is_done(status: str) -> bool:
    """A (stored) partition status that needs nothing more: complete, or skipped on purpose;
    every other one means the partition failed or is unfinished."""
    return status in DONE


class Mode(StrEnum):
    """How a run goes through a partition (see :mod:`etl.partition`)."""

    NEW = "new"  # never read: every row
    RESUME = "resume"  # started before: the rows after its cursor
    RECHECK = "recheck"  # complete, but the source's count changed: every row, new ones sent
    SKIP = "skip"  # nothing to read: complete and unchanged, or skipped


class BatchStatus(StrEnum):
    """A batch's status in ``<prefix>batches``."""

    SENT = "sent"  # its request may have left; no answer recorded yet
    ACKED = "acked"  # answered, and what it means committed
    IN_DOUBT = "in_doubt"  # sent by a run that ended before the answer: may have landed


class Outcome(StrEnum):
    """What became of one source row (the delivery log's outcome of it)."""

    DELIVERED = "delivered"
    IN_DOUBT = "in_doubt"  # delivered, and a copy may be extra (a request whose fate is unknown)
    DEAD_LETTER = "dead_letter"
    FILTERED = "filtered"


class RunEnd(StrEnum):
    """How a destination's run ended before its partitions were all closed."""

    STOPPED = "stopped"  # asked to stop: the partitions left open are interrupted
    INTERRUPTED = "interrupted"  # Ctrl-C reached the run itself
    FAILED = "failed"  # an error stopped the destination

    @property
    def partition_status(self) -> PartitionStatus:
        if self is RunEnd.FAILED:
            return PartitionStatus.FAILED
        return PartitionStatus.INTERRUPTED
