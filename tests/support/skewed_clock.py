"""Run ``embedder embed`` as a host whose wall clock is SECONDS fast (or slow, if negative).

    python -m tests.support.skewed_clock SECONDS --collection ... (the options of `embedder embed`)

The shift applies to the time the worker stamps on the rows it writes (``embedded_at``),
the only clock the consolidator ever saw: what a host with a wrong clock would write.
"""

from __future__ import annotations

import datetime as dt
import sys
import types

from embedder.cli import main
from embedder.worker import pipeline


def _skewed(seconds: float) -> types.SimpleNamespace:
    class SkewedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> SkewedDatetime:
            return super().now(tz) + dt.timedelta(seconds=seconds)

    return types.SimpleNamespace(datetime=SkewedDatetime, UTC=dt.UTC, timedelta=dt.timedelta)


if __name__ == "__main__":
    skew, *args = sys.argv[1:]
    pipeline.dt = _skewed(float(skew))  # type: ignore[attr-defined,assignment]
    main(["embed", *args])
