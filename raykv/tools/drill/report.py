"""Drill results: per-kill records, the result of a drill, and their text report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raykv.tools.drill.config import DrillConfig

if TYPE_CHECKING:

    pass


# ---------------------------------------------------------------------------- results


@dataclass
class KillRecord:
    """One kill and the recovery that followed.

    Attributes:
        number: 1-based position in the drill.
        round: the run (round) it happened in.
        moment: one of ``MOMENTS``.
        when: what exactly it followed (e.g. ``"0.12 s after barrier 5"``).
        shard: the shard actor killed.
        epoch: the epoch of the triggering event (``None`` for ``recovery``).
        restored_from: the committed epoch every shard was restored from (``None``: the
            run restarted from empty state, nothing was committed yet).
        events_replayed: source rows read again after the recovery: those of the epochs
            whose barrier was sent but which were not committed (rows the readers read
            past the last barrier are replayed too but not counted).
        detect_s: seconds from the kill to the driver noticing the failure.
        recovery_s: seconds from the kill to the attempt's actors being ready again
            (survivors rolled back, the dead replaced: the ``"started"`` event).
        commit_s: seconds from the kill to the first epoch committed after it (the
            end of the outage as the output sees it).
        interrupted: the next kill (a ``recovery`` kill) struck while this kill's
            replacement shards were restoring; that kill's row shows the recovery.
    """

    number: int
    round: int
    moment: str
    when: str
    shard: str
    epoch: int | None
    restored_from: int | None = None
    events_replayed: int = 0
    detect_s: float | None = None
    recovery_s: float | None = None
    commit_s: float | None = None
    interrupted: bool = False
    killed_at: float = 0.0
    failure_pos: int | None = None


@dataclass
class DrillResult:
    """What a drill did and found.

    Attributes:
        config: the drill's configuration.
        kills: the kills that were detected and recovered from, in order.
        undetected: kills that struck after the run had committed its final epoch (they
            prove nothing and do not count).
        rounds: runs with kills (the reference run not included).
        epochs: epochs per run (the final one included).
        rows_out: published output rows of the reference run.
        problems: every check that failed (empty: the drill passed).
        wall_time: seconds for the whole drill.
    """

    config: DrillConfig
    kills: list[KillRecord] = field(default_factory=list)
    undetected: list[KillRecord] = field(default_factory=list)
    rounds: int = 0
    epochs: int = 0
    rows_out: int = 0
    problems: list[str] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every kill was survived and every output was exact."""
        return not self.problems and len(self.kills) >= self.config.kills


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``sorted_values`` (nearest rank; non-empty)."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


def format_table(kills: Sequence[KillRecord]) -> str:
    """Render kill records as a fixed-width text table (one line per kill)."""
    head = (f"{'#':>3}  {'round':>5}  {'moment':<9}  {'when':<30}  {'shard':<22}  "
            f"{'restored':>8}  {'replayed':>9}  {'detect s':>8}  {'recovery s':>11}  "
            f"{'commit s':>8}")
    lines = [head, "-" * len(head)]
    for k in kills:
        restored = "empty" if k.restored_from is None else str(k.restored_from)
        detect = "-" if k.detect_s is None else f"{k.detect_s:.2f}"
        recovery = "-" if k.recovery_s is None else f"{k.recovery_s:.2f}"
        commit = "-" if k.commit_s is None else f"{k.commit_s:.2f}"
        if k.interrupted:
            restored, recovery, commit = "next row", "interrupted", "-"
        lines.append(
            f"{k.number:>3}  {k.round:>5}  {k.moment:<9}  {k.when:<30.30}  {k.shard:<22.22}  "
            f"{restored:>8}  {k.events_replayed:>9,}  {detect:>8}  {recovery:>11}  {commit:>8}"
        )
    return "\n".join(lines)


def summarize(result: DrillResult) -> str:
    """One paragraph: kills survived, recovery times, exactness."""
    cfg = result.config
    times = sorted(k.recovery_s for k in result.kills if k.recovery_s is not None)
    per_moment = {m: sum(1 for k in result.kills if k.moment == m) for m in cfg.moments}
    lines = [
        f"kills survived: {len(result.kills)}/{cfg.kills} in {result.rounds} round(s) "
        f"({', '.join(f'{m} {n}' for m, n in per_moment.items())})",
    ]
    if times:
        median = times[len(times) // 2]
        lines.append(f"recovery time: median {median:.2f} s, max {times[-1]:.2f} s; "
                     f"events replayed: {sum(k.events_replayed for k in result.kills):,}")
    commits = sorted(k.commit_s for k in result.kills if k.commit_s is not None)
    if commits:
        lines.append(f"kill to next commit: p50 {percentile(commits, 50):.2f} s, "
                     f"p95 {percentile(commits, 95):.2f} s, max {commits[-1]:.2f} s")
    if result.undetected:
        lines.append(f"{len(result.undetected)} kill(s) struck after the final commit "
                     "(not counted)")
    if result.problems:
        lines.append("MISMATCH:")
        lines.extend(f"  - {p}" for p in result.problems)
    else:
        lines.append(
            f"exact: every round published the failure-free output ({result.epochs} epochs, "
            f"{result.rows_out:,} rows, final state of {cfg.keys:,} zipf users checked "
            "against pyarrow group_by) and its store verifies"
        )
    lines.append(f"drill time: {result.wall_time:.1f} s")
    return "\n".join(lines)
