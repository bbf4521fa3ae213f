"""`python -m tests.indexing.stalled_ingest STAGE N`: an ingest (settings from RAG_ env) that stalls
the N-th time it reaches STAGE, so a test can SIGKILL it exactly there."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import cast

from config import load_settings
from indexing.pipeline import Stage, ingest

STALLED = "STALLED"
"""Printed to stderr once the ingest holds still."""


def stall_at(stage: Stage, nth: int) -> Callable[[Stage], None]:
    """An `on_stage` hook that blocks forever the `nth` time `stage` is reached."""
    seen = 0

    def hook(reached: Stage) -> None:
        nonlocal seen
        if reached != stage:
            return
        seen += 1
        if seen == nth:
            print(f"{STALLED} at {stage}:{nth}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    return hook


if __name__ == "__main__":
    ingest(load_settings().index, progress=False, on_stage=stall_at(cast(Stage, sys.argv[1]), int(sys.argv[2])))
