"""A bench row, the settings every row takes, and the table they print as."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Settings:
    quick: bool
    peers: bool

    def pick(self, full, quick):
        return quick if self.quick else full


@dataclasses.dataclass
class Row:
    """One line of the table: `ratio` compares `ours` with `baseline` (see `ratio_of`)."""

    group: str
    name: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float | None
    ratio_of: str  # what the ratio divides, e.g. "masked / dense"
    goal: str = ""  # e.g. "<= 1.05" (a bound on `ratio`, or on `ours` where `goal_on` is "ours")
    goal_on: str = "ratio"

    @property
    def holds(self) -> bool | None:
        if not self.goal:
            return None
        value = self.ratio if self.goal_on == "ratio" else self.ours
        if value is None:
            return None
        operator, bound = self.goal.split()
        return value <= float(bound) if operator == "<=" else value >= float(bound)

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), holds=self.holds)


def format_table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    header = ["group", "row", "ours", "baseline", "unit", "ratio", "ratio of", "goal", "holds"]
    cells = [[row.group, row.name, f"{row.ours:.4g}", "" if row.baseline is None else f"{row.baseline:.4g}", row.unit,
              "" if row.ratio is None else f"{row.ratio:.2f}", row.ratio_of,
              (row.goal + (" s" if row.goal_on == "ours" else "")) if row.goal else "",
              {True: "yes", False: "NO", None: ""}[row.holds]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in [header, *cells]]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
