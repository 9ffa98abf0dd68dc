"""Named crash points for fault-injection tests.

``failpoint("name")`` kills the process with SIGKILL when ``EMBEDDER_FAILPOINT`` names that
point, and does nothing otherwise. Tests use it to stop a run at an exact step and check
that the next run finishes the job; it is never set in production.
"""

from __future__ import annotations

import os
import signal

_VARIABLE = "EMBEDDER_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
