"""What a reconcile pass repaired, counted by kind."""

from __future__ import annotations

from pydantic import BaseModel, computed_field

#: What a report counts that is no repair (`total` leaves it out: a second pass reports 0).
_NOT_REPAIRS = frozenset({"stray_songs_skipped"})


class ReconcileReport(BaseModel):
    expired_leases: int = 0
    exhausted_scenes: int = 0
    orphaned_polls: int = 0
    #: scenes between stages (a cut missing) that no chain worked on, resumed
    resumed_stages: int = 0
    #: scenes between stages waiting for a paid stage no live run may pay for, back to pending
    waiting_scenes_reset: int = 0
    recovered_clips: int = 0
    missing_clips: int = 0
    missing_final_videos: int = 0
    outdated_final_videos: int = 0
    counters_fixed: int = 0
    costs_recounted: int = 0
    runs_finalized: int = 0
    runs_taken_over: int = 0
    garbage_deleted: int = 0
    stray_scenes_deleted: int = 0
    #: songs of creates whose METADATA never landed (past the grace period)
    stray_songs_deleted: int = 0
    #: songs like those that are not tagged with this table (another deployment's on a shared
    #: bucket, or untagged): kept
    stray_songs_skipped: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        """The repairs made."""
        return sum(
            v for k, v in self.__dict__.items() if isinstance(v, int) and k not in _NOT_REPAIRS
        )
