"""What an ingest did, as data (for callers and tests) and as the summary printed at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from indexing.sources import Problem

_SKIPPED_SHOWN = 20
"""Skipped files listed one by one; the rest are counted by reason (a folder may hold thousands)."""


@dataclass
class IngestReport:
    """Files by outcome, chunk counts, and the index version before and after."""

    index_dir: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    hidden: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    documents: int = 0
    chunks: int = 0
    version_before: str = ""
    version: str = ""
    seconds: float = 0.0
    embed_seconds: float = 0.0
    """Time spent inside the pipeline runs (split + embed + vector write) for the written chunks."""

    @property
    def ok(self) -> bool:
        """True when no file failed (skipped files of unknown type do not count as failures)."""
        return not self.failed

    @property
    def changed(self) -> bool:
        return self.version != self.version_before

    def summary(self) -> str:
        rate = f", {self.chunks_written / self.seconds:.1f} chunks/s" if self.chunks_written and self.seconds else ""
        lines = [
            f"Index {self.index_dir}: {self.documents} documents, {self.chunks} chunks, version {self.version}"
            + (" (changed)" if self.changed else " (unchanged)"),
            f"  added {len(self.added)} · updated {len(self.updated)} · unchanged {len(self.unchanged)} · "
            f"removed {len(self.removed)} · failed {len(self.failed)} · skipped {len(self.skipped)}",
            f"  chunks written {self.chunks_written}, deleted {self.chunks_deleted}; {self.seconds:.1f} s{rate}",
        ]
        if self.failed:
            lines.append("Failed (not indexed; anything stored before is kept):")
            lines.extend(f"  {p.path}: {p.reason}" for p in self.failed)
        if self.skipped:
            lines.append("Skipped:")
            lines.extend(f"  {p.path}: {p.reason}" for p in self.skipped[:_SKIPPED_SHOWN])
            if len(self.skipped) > _SKIPPED_SHOWN:
                rest = Counter(p.reason for p in self.skipped[_SKIPPED_SHOWN:])
                kinds = ", ".join(f"{reason} ({n})" for reason, n in rest.most_common())
                lines.append(f"  ... and {len(self.skipped) - _SKIPPED_SHOWN} more: {kinds}")
        if self.hidden:
            lines.append(f"  ({self.hidden} hidden entries ignored)")
        return "\n".join(lines)
