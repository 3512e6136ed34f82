"""CSV/TSV cells a spreadsheet will not run: every table we write goes through `write_table`.

Spreadsheets (Excel, LibreOffice, Google Sheets) run a text cell that starts with `=`, `+`, `-` or `@`
as a formula, and also one that starts with a tab or a carriage return followed by one. Labels and
descriptions come from an LLM and protein text from Swiss-Prot, so they are untrusted. OWASP's rule
(CSV Injection): prefix such a text cell with a single quote, which spreadsheets show as text; the
writer quotes a cell holding the delimiter, a quote, a CR or a line break.

Only text is prefixed: numbers (int and float, e.g. a negative correlation -0.12) are written as
numbers so that readers (pandas' read_csv, InterPLM's dashboard) still get numeric columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> str | int | float:
    """One cell: None as empty, booleans as true/false, numbers as they are, text neutralised."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return "" if math.isnan(value) else value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _field(cell: str | int | float, delimiter: str) -> str:
    """RFC 4180 quoting. Written by hand because the csv module leaves a lone CR unquoted when the
    line terminator is \n, and a reader then splits the row there."""
    if not isinstance(cell, str):
        return repr(cell)
    if any(char in cell for char in (delimiter, '"', "\n", "\r")):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def table_line(row: Sequence[Any], *, delimiter: str = ",") -> str:
    """One line of a table (with its newline), every cell through `spreadsheet_cell`: to stream rows."""
    return delimiter.join(_field(spreadsheet_cell(value), delimiter) for value in row) + "\n"


def write_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, delimiter: str = ",") -> str:
    """A CSV (or, with delimiter="\t", TSV) text whose every cell went through `spreadsheet_cell`."""
    return "".join(table_line(row, delimiter=delimiter) for row in (header, *rows))
