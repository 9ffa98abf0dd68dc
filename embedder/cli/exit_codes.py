"""What each command's exit status means: one table, for scripts and the README's "Exit codes"."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    # The command ran and found something wrong with the data: verify's FAILED, a --doc
    # whose row is missing or stale, shards consolidate left in place, no autotune setting
    # within the SLO.
    DISCREPANCY = 1
    USAGE = 2  # an option's value refused before any work (click's own code)
    # Could not run, or not to the end: configuration, MongoDB or a server unreachable or not
    # what it should be, a missing index, a port in use, a directory that cannot be written.
    COULD_NOT_RUN = 3
    # Nothing to do here: verify found no doc done and no output; another consolidator
    # holds the output.
    NOTHING_TO_DO = 4
    # An unexpected error: a bug. One line names it; --log-level DEBUG shows the traceback.
    INTERNAL = 70  # sysexits' EX_SOFTWARE
    INTERRUPTED = 130  # Ctrl-C before the work was done (128 + SIGINT, as shells report it)
