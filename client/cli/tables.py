"""The CSV files of `heserve predict`: reading and checking the input, writing the predictions.

Every problem of the input is a CLIError (exit code 2) found before anything is sent to the server.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from heserve.client.cli.arguments import PROG
from heserve.client.cli.exitcodes import CLIError
from heserve.client.cli.render import MAX_LISTED, one_line, quoted
from heserve.client.client import RemoteModel


@dataclass
class Table:
    """A CSV file: stripped header names, then the data rows as strings with their line numbers."""

    source: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # line of the file (the header is line 1) where each data row ends


def read_table(path: str, delimiter: str = ",") -> Table:
    """Read a CSV with a header row. '-' reads standard input. Raises CLIError (exit 2) on any problem."""
    source = "standard input" if path == "-" else path
    try:
        if path == "-":
            return _parse_table(sys.stdin, source, delimiter)
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _parse_table(handle, source, delimiter)
    except FileNotFoundError:
        raise CLIError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a CSV file") from None
    except PermissionError:
        raise CLIError(f"cannot read {path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") from None
    except OSError as exc:
        raise CLIError(f"cannot read {source}: {exc.strerror or exc}") from None


def _parse_table(handle: TextIO, source: str, delimiter: str) -> Table:
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise CLIError(f"{source} is empty: expected a header row naming the columns, then one row per sample")
        header = [cell.strip() for cell in header]
        header[0] = header[0].lstrip("\ufeff").strip()  # a byte-order mark that reached us through stdin
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise CLIError(f"{source}: malformed CSV at line {reader.line_num}: {exc}") from None
    # Blank lines at the end (spreadsheets like to leave some) are not samples.
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
        lines.pop()
    for position, name in enumerate(header, start=1):
        if not name:
            raise CLIError(f"{source}: column {position} of the header has no name")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise CLIError(f"{source}: column {name!r} appears more than once in the header")
        seen.add(name)
    if not rows:
        raise CLIError(f"{source} has a header but no data rows")
    for number, (row, line) in enumerate(zip(rows, lines, strict=True), start=1):
        if len(row) != len(header):
            where = f"{source}: data row {number} (line {line} of the file, the header being line 1)"
            if not any(cell.strip() for cell in row):
                raise CLIError(f"{where} is empty")
            raise CLIError(f"{where} has {len(row)} values, the header has {len(header)} columns")
    return Table(source, header, rows, lines)


def match_columns(table: Table, model: RemoteModel, id_column: str | None) -> list[int]:
    """Indices into the CSV header of the model's inputs, in the model's order."""
    header = table.header
    if id_column is not None and id_column not in header:
        raise CLIError(f"{table.source}: --id-column {id_column!r} is not in the header")
    names = model.input_names
    features = [name for name in header if name != id_column or name in names]
    if not names:  # a model without published names: the columns are taken in the file's order
        if len(features) != model.n_features_in_:
            raise CLIError(
                f"{table.source} has {len(features)} feature columns, model {model.name!r} expects "
                f"{model.n_features_in_} (it publishes no input names, so they are taken in the file's order)"
            )
        return [header.index(name) for name in features]
    expected = set(names)
    missing = [name for name in names if name not in header]
    extra = [name for name in features if name not in expected]
    if missing or extra:
        parts = [f"{table.source} does not have the columns model {model.name!r} expects"]
        if missing:
            parts.append(f"missing column{'s' if len(missing) > 1 else ''}: {quoted(missing)}")
        if extra:
            hints = []
            for name in extra[:MAX_LISTED]:
                close = difflib.get_close_matches(name, missing, n=1, cutoff=0.6)
                if not close:
                    close = [m for m in missing if m.casefold() == name.casefold()]
                hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            more = f" and {len(extra) - MAX_LISTED} more" if len(extra) > MAX_LISTED else ""
            parts.append(f"extra column{'s' if len(extra) > 1 else ''}: {', '.join(hints)}{more}")
        parts.append(
            f"the model takes {len(names)} columns in any order (see '{PROG} models'); "
            "pass --id-column NAME to carry an identifier column through"
        )
        raise CLIError("; ".join(parts))
    return [header.index(name) for name in names]


def parse_values(table: Table, columns: list[int]) -> np.ndarray:
    """The selected columns as floats (rows, features). Non-numeric, empty, NaN and infinite cells are errors."""
    x = np.empty((len(table.rows), len(columns)), dtype=np.float64)
    bad: list[str] = []
    count = 0
    for r, row in enumerate(table.rows):
        for c, index in enumerate(columns):
            cell = row[index].strip()
            problem = None
            if not cell:
                problem = "empty"
            else:
                try:
                    value = float(cell)
                except ValueError:
                    problem = f"{one_line(cell, 40)!r} is not a number"
                else:
                    if not math.isfinite(value):
                        problem = f"{cell!r} is not a finite number"
                    else:
                        x[r, c] = value
            if problem:
                count += 1
                if len(bad) < MAX_LISTED:
                    bad.append(f"data row {r + 1} (line {table.lines[r]}), column {table.header[index]!r}: {problem}")
    if count:
        more = f"; and {count - len(bad)} more" if count > len(bad) else ""
        raise CLIError(
            f"{table.source}: {count} bad value{'s' if count > 1 else ''} (data rows are counted from 1 below the "
            f"header; 'line' counts the header as line 1): {'; '.join(bad)}{more}"
        )
    return x


def write_table(path: str, header: list[str], rows: list[list[str]]) -> None:
    """Write a CSV ('-': standard output); a file is written whole or not at all."""
    if path == "-":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        sys.stdout.flush()
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=".tmp-", suffix=".csv")
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None


def _umask() -> int:
    # The umask can only be read by setting it: set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask
