"""What ``embedder export`` found: one line per failed check, and the exit code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from embedder.files.consolidate_outputs import FAILURES_FILE
from embedder.ops.export_order import OrderBy, Placement
from embedder.ops.verify import Finding, Verdict

CORPUS_ORDER = "corpus"  # the order of a file corpus's plan
IDS_FILE_ORDER = "ids-file"


@dataclass
class ExportReport:
    source: str
    order: str = ""
    npy: str | None = None
    pickle: str | None = None
    model_id: str | None = None
    output_rows: int = 0
    shape: tuple[int, int] | None = None  # as the written file's header says
    expected_shape: tuple[int, int] | None = None
    placement: Placement = field(default_factory=Placement)
    normalized: bool = True
    nonfinite: Finding = field(default_factory=Finding)
    off_norm: Finding = field(default_factory=Finding)
    norm_tolerance: float = 1e-3
    file_size: int | None = None
    expected_file_size: int | None = None
    elapsed_s: float = 0.0
    could_not_check: str | None = None

    @classmethod
    def cannot(cls, source: str, reason: str) -> ExportReport:
        return cls(source, could_not_check=reason)

    @property
    def verdict(self) -> Verdict:
        if self.could_not_check is not None:
            return Verdict.COULD_NOT_CHECK
        return Verdict.FAILED if self.failures() else Verdict.OK

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def failures(self) -> list[str]:
        """One line per failed check."""
        found = self.placement
        failed: list[str] = []
        if found.missing.count or found.missing_unnamed:
            failed.append(self._missing_line())
        if found.duplicate_ids.count:
            failed.append(
                f"ids held by more than one row: {found.duplicate_ids.count} extra rows "
                f"(ids {', '.join(found.duplicate_ids.sample)})"
            )
        if found.shared_places.count:
            where = "lines of the ids file" if self.order == IDS_FILE_ORDER else "positions"
            failed.append(
                f"{where} held by rows of different ids: {found.shared_places.count} "
                f"({', '.join(found.shared_places.sample)})"
            )
        if found.ids_listed_twice.count:
            failed.append(
                f"ids listed twice in the ids file: {found.ids_listed_twice.count} "
                f"({', '.join(found.ids_listed_twice.sample)})"
            )
        if found.unplaced.count:
            failed.append(
                f"rows with no place in the order ({self._beyond()}): {found.unplaced.count} "
                f"(ids {', '.join(found.unplaced.sample)})"
            )
        if self.shape != self.expected_shape:
            failed.append(f"shape {self.shape}, expected {self.expected_shape}")
        if self.nonfinite.count:
            failed.append(
                f"rows holding NaN or infinity: {self.nonfinite.count} ({self.nonfinite.text()})"
            )
        if self.off_norm.count:
            failed.append(
                f"norms off 1.0 by more than {self.norm_tolerance:g}: {self.off_norm.count} rows "
                f"({', '.join(self.off_norm.sample)})"
            )
        if self.file_size != self.expected_file_size:
            failed.append(
                f"file size {self.file_size} bytes, expected {self.expected_file_size} "
                "(header + rows x dimension x 4)"
            )
        return failed

    def _missing_line(self) -> str:
        found = self.placement
        expected = found.expected_rows if found.expected_rows is not None else found.rows
        if found.missing_unnamed:
            return (
                f"missing rows: {found.missing_unnamed} of {expected} expected "
                f"(the output holds {self.output_rows}; give --ids to name them)"
            )
        what = "ids" if self.order == IDS_FILE_ORDER else "positions"
        line = f"missing rows: {found.missing.count} of {expected} expected ({what} {_listed(found.missing)})"
        if found.missing_bad.count:
            line += (
                f"; {found.missing_bad.count} of them bad records listed in {FAILURES_FILE} "
                f"({_listed(found.missing_bad)})"
            )
        return line

    def _beyond(self) -> str:
        if self.order == OrderBy.POSITION:
            return f"not a position below {self.placement.rows}"
        if self.order == CORPUS_ORDER:
            return "not in the corpus's selection"
        return "not in the ids file"

    def lines(self) -> list[str]:
        if self.could_not_check is not None:
            return [f"export: {Verdict.COULD_NOT_CHECK.label}: {self.could_not_check}"]
        written = ", ".join(p for p in (self.npy, self.pickle) if p)
        failures = self.failures()
        head = (
            f"export: {'OK' if not failures else 'FAILED'}: {self.shape} float32 in "
            f"{self.order} order from {self.output_rows} rows of {self.model_id} -> {written} "
            f"({self.elapsed_s}s)"
        )
        notes = []
        if self.placement.expected_rows is None and self.order == OrderBy.POSITION:
            notes.append(
                "  note: the number of rows is taken from the highest position; "
                "give --expect-rows to check for rows missing at the end"
            )
        if not self.normalized:
            notes.append("  note: the output's vectors are not normalized: norms not checked")
        return [head, *(f"  {line}" for line in failures), *notes]

    def as_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        plain["failures"] = self.failures()
        return {**plain, "ok": self.ok, "exit_code": self.verdict.value}


def _listed(finding: Finding) -> str:
    more = ", ..." if finding.count > len(finding.sample) else ""
    return ", ".join(finding.sample) + more
