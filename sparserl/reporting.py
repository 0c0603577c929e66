"""Metrics logging: per-seed CSV files, TensorBoard events and console progress.

Each seed of a run owns a directory `{workdir}/{run_name}/seed{n}/` (docs/design.md contract 5) holding
`metrics.csv` (training metrics), `eval.csv` (evaluation metrics) and tensorboardX event files. Column
names and TensorBoard tags are the metric names as given (contract 6).

Crash safety (contract 7): every row is one `write()` of a complete line followed by a flush, and every
rewrite of a file (a wider header, a resume truncation) goes through a temporary file in the same
directory that is fsynced and then moved over the original with `os.replace`. A kill can therefore leave at
most one partial last line, which the next resume drops.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
import sys
import time
from typing import Mapping, TextIO

import tensorboardX
from tensorboardX.proto.summary_pb2 import Summary

CSV_FILENAMES = {"train": "metrics.csv", "eval": "eval.csv"}
INDEX_COLUMNS = ("step", "seed")


def _format_row(cells: list[str]) -> str:
    """Returns one complete CSV line (with its newline) for `cells`."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _format_value(value: float) -> str:
    """Formats a metric value exactly (repr of the float); NaN becomes an empty cell."""
    number = float(value)
    return "" if math.isnan(number) else repr(number)


def atomic_write_text(path: str, text: str) -> None:
    """Replaces `path` with `text` so that readers see either the old or the new file, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary_path = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    with open(temporary_path, "w", encoding="utf-8", newline="") as temporary_file:
        temporary_file.write(text)
        temporary_file.flush()
        os.fsync(temporary_file.fileno())
    os.replace(temporary_path, path)
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _read_complete_lines(path: str) -> list[list[str]]:
    """Parses the complete (newline-terminated) lines of a CSV file; a partial last line is ignored."""
    with open(path, encoding="utf-8", newline="") as csv_file:
        text = csv_file.read()
    complete_text = text[: text.rfind("\n") + 1]
    return list(csv.reader(io.StringIO(complete_text)))


class _CsvLog:
    """One append-only CSV file whose header grows to the union of the metric names written to it."""

    def __init__(self, path: str, resume_step: int | None):
        self.path = path
        self.header: list[str] = []
        self._file: TextIO | None = None
        if resume_step is None:
            if os.path.exists(path):
                atomic_write_text(path, "")
        elif os.path.exists(path):
            self._truncate_after(resume_step)

    def _truncate_after(self, resume_step: int) -> None:
        """Keeps the header and the complete rows with step <= resume_step."""
        lines = _read_complete_lines(self.path)
        if not lines:
            atomic_write_text(self.path, "")
            return
        header, *rows = lines
        step_index = header.index("step")
        kept_rows = [row for row in rows
                     if len(row) == len(header) and int(row[step_index]) <= resume_step]
        self.header = header
        atomic_write_text(self.path, "".join(_format_row(line) for line in [header, *kept_rows]))

    def _extend_header(self, new_columns: list[str]) -> None:
        """Rewrites the file with `new_columns` appended to the header; old rows get empty cells."""
        self.close()
        rows = _read_complete_lines(self.path)[1:] if self.header else []
        self.header = self.header + new_columns if self.header else [*INDEX_COLUMNS, *new_columns]
        padded_rows = [row + [""] * (len(self.header) - len(row)) for row in rows]
        atomic_write_text(self.path, "".join(_format_row(line) for line in [self.header, *padded_rows]))

    def append(self, step: int, seed: int, metrics: Mapping[str, float]) -> None:
        """Appends one row, widening the header first if `metrics` brings new names."""
        known_columns = set(self.header)
        new_columns = [name for name in metrics
                       if name not in known_columns and name not in INDEX_COLUMNS]
        if new_columns or not self.header:
            self._extend_header(new_columns)
        cells = {name: _format_value(value) for name, value in metrics.items()}
        cells.update(step=str(int(step)), seed=str(int(seed)))
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", newline="")
        self._file.write(_format_row([cells.get(name, "") for name in self.header]))
        self._file.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class MetricsWriter:
    """Per-seed metrics: `metrics.csv` (train) and `eval.csv` (eval) plus TensorBoard events, in seed_dir
    ({workdir}/{run_name}/seed{n}/, docs/design.md contract 5). Column names / tags are the metric names as given
    (contract 6: 'step', 'seed', 'train/episode_return', 'loss/td', 'sparsity/total', 'dormant/0.1/total', ...).

    With `resume_step=k` the CSVs keep only their complete rows with step <= k and TensorBoard discards the
    events after step k. With `resume_step=None` (a fresh start) the CSVs are emptied and TensorBoard
    discards every earlier event in seed_dir.
    """

    def __init__(self, seed_dir: str | os.PathLike, seed: int, resume_step: int | None = None):
        self.seed_dir = os.fspath(seed_dir)
        self.seed = int(seed)
        os.makedirs(self.seed_dir, exist_ok=True)
        self._csv_logs = {kind: _CsvLog(os.path.join(self.seed_dir, filename), resume_step)
                          for kind, filename in CSV_FILENAMES.items()}
        purge_step = 0 if resume_step is None else resume_step + 1
        self._summary_writer = tensorboardX.SummaryWriter(logdir=self.seed_dir, purge_step=purge_step)

    def write(self, step: int, metrics: Mapping[str, float], kind: str = "train") -> None:
        """Logs `metrics` at `step`: one CSV row (kind 'train' -> metrics.csv, 'eval' -> eval.csv) and one
        TensorBoard scalar per non-NaN metric."""
        if kind not in self._csv_logs:
            raise ValueError(f"kind must be one of {sorted(self._csv_logs)}, got {kind!r}")
        self._csv_logs[kind].append(step, self.seed, metrics)
        values = [Summary.Value(tag=name, simple_value=float(value)) for name, value in metrics.items()
                  if not math.isnan(float(value))]
        if values:  # one event holds every scalar of the row (add_scalar writes one event per scalar: 10x slower)
            self._summary_writer.file_writer.add_summary(Summary(value=values), int(step))

    def flush(self) -> None:
        for csv_log in self._csv_logs.values():
            csv_log.flush()
        self._summary_writer.flush()

    def close(self) -> None:
        for csv_log in self._csv_logs.values():
            csv_log.close()
        self._summary_writer.close()


def read_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Reads a metrics CSV: 'step' and 'seed' as int, other cells as float, empty cells as NaN."""
    with open(path, encoding="utf-8", newline="") as csv_file:
        return [{name: (int(cell) if name in INDEX_COLUMNS else float(cell) if cell else math.nan)
                 for name, cell in row.items()}
                for row in csv.DictReader(csv_file)]


def _finite_value(metrics: Mapping[str, float], name: str) -> float | None:
    """The value of metric `name`, or None when it is absent or NaN."""
    if name not in metrics or math.isnan(float(metrics[name])):
        return None
    return float(metrics[name])


def _first_network_value(metrics: Mapping[str, float], prefix: str) -> float | None:
    """The value of `{prefix}total`, else of the first `{prefix}<network>/total` (multi-network agents)."""
    network_totals = [name for name in metrics
                      if name.startswith(prefix) and name.endswith("/total")
                      and name.count("/") == prefix.count("/") + 1]
    for name in [f"{prefix}total", *network_totals]:
        value = _finite_value(metrics, name)
        if value is not None:
            return value
    return None


class ProgressPrinter:
    """Console progress for long runs: one line at most every `interval_seconds` (and always on `final=True`), e.g.
    `[dqn CartPole-v1] step 12,000/50,000 (24%) | 3,150 sps | return 187.3 | sparsity 0.900 | dormant(0.1) 0.12 | eta 0:00:12`

    Fields whose metric is missing or NaN are omitted; the ETA is omitted once step reaches total_steps. The ETA uses the 'sps' metric when present, else the
    rate measured by this printer since its first update.
    """

    def __init__(self, label: str, total_steps: int, interval_seconds: float = 10.0, stream=sys.stdout,
                 clock=time.monotonic):
        self.label = label
        self.total_steps = int(total_steps)
        self.interval_seconds = interval_seconds
        self.stream = stream
        self.clock = clock
        self._last_print_time = clock()
        self._first_update: tuple[int, float] | None = None

    def update(self, step: int, metrics: Mapping[str, float], final: bool = False) -> None:
        """Prints a progress line if `interval_seconds` have passed since the last one, or if `final`."""
        self.update_groups(step, {"": metrics}, final)

    def update_groups(self, step: int, metrics: Mapping[str, Mapping[str, float]], final: bool = False) -> None:
        """Like `update`, with a line per group of runs (a sweep's levels: `{"0.9": metrics, ...}`), each labelled
        with its group's name after this printer's label."""
        now = self.clock()
        if self._first_update is None:
            self._first_update = (step, now)
        if not final and now - self._last_print_time < self.interval_seconds:
            return
        self._last_print_time = now
        for group, group_metrics in metrics.items():
            print(self._format_line(step, group_metrics, now, group), file=self.stream, flush=True)

    def _format_line(self, step: int, metrics: Mapping[str, float], now: float, group: str = "") -> str:
        """The progress line for `step`, without printing it."""
        percent = 100 * step // self.total_steps if self.total_steps > 0 else 100
        fields = [f"step {step:,}/{self.total_steps:,} ({percent}%)"]
        steps_per_second = _finite_value(metrics, "sps")
        shown = ((steps_per_second, "{:,.0f} sps"), (_finite_value(metrics, "train/episode_return"), "return {:.1f}"),
                 (_first_network_value(metrics, "sparsity/"), "sparsity {:.3f}"),
                 (_first_network_value(metrics, "dormant/0.1/"), "dormant(0.1) {:.2f}"))
        fields += [text.format(value) for value, text in shown if value is not None]
        rate = steps_per_second if steps_per_second else self._measured_rate(step, now)
        if rate and step < self.total_steps:
            remaining_seconds = (self.total_steps - step) / rate
            fields.append(f"eta {datetime.timedelta(seconds=round(remaining_seconds))}")
        return f"[{self.label}{' ' + group if group else ''}] " + " | ".join(fields)

    def _measured_rate(self, step: int, now: float) -> float | None:
        """Steps per second since the first update, or None before any time has passed."""
        first_step, first_time = self._first_update
        elapsed = now - first_time
        return (step - first_step) / elapsed if elapsed > 0 and step > first_step else None
