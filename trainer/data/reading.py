"""Local data files -> raw records, one per row, each with the location a user can find it by.

Formats (by extension, as LLaMA-Factory): `.json` (a list of objects, an object of columns, or JSON
Lines), `.jsonl`, `.parquet`, `.arrow` (the Arrow stream files `datasets` writes), `.csv` (read by
pandas, as `datasets` does: empty cells are missing). A `file_name` naming a folder reads every file in
it, a glob (`shards/*.jsonl`) every file it matches, in sorted name order, all of one type.

Rows are read one by one so that one bad row never hides the others: an unparsable JSON Lines line or
bytes that are not UTF-8 become an `Unreadable` record for the converter to count, not an exception.
Invalid UTF-8 inside a `.json` document is decoded with `surrogateescape` and caught later as a lone
surrogate; a leading UTF-8 byte order mark is dropped; nesting too deep for `json` is invalid JSON.
Row numbers are 0-based record indices: `data[4]` of a JSON list, the 5th non-blank line of a JSON Lines
file, the pandas index of a CSV; for a folder they are prefixed with the file name.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import DataError

FILE_TYPES = ("json", "jsonl", "parquet", "arrow", "csv")


@dataclass(frozen=True)
class Unreadable:
    """A row that could not be parsed at all; `reason` is a skip reason of `conversion`."""

    reason: str
    detail: str


def data_files(path: Path) -> list[Path]:
    """The files behind a dataset's `file_name` (a file, every file of a folder, or a glob's matches), all
    of one type."""
    if _is_glob(path):
        files = sorted(p for p in Path(path.anchor).glob(str(path.relative_to(path.anchor))) if p.is_file())
        if not files:
            raise DataError(f"{path}: the pattern matches no file")
    else:
        files = (
            sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if path.is_dir()
            else [path]
        )
    if not files:
        raise DataError(f"{path}: the folder holds no data files")
    types = {p.suffix.lstrip(".").lower() for p in files}
    if len(types) > 1:
        raise DataError(f"{path}: files of one dataset must share one type, found {sorted(types)}")
    (kind,) = types
    if kind not in FILE_TYPES:
        raise DataError(f"{files[0]}: file type {kind!r} is not supported; use one of {list(FILE_TYPES)}")
    return files


def _is_glob(path: Path) -> bool:
    return any(c in path.name or c in str(path.parent) for c in "*?[")


def read_records(path: Path) -> list[tuple[str, Any]]:
    """(row location, record) for every row of the dataset at `path`; a record is a dict, or any other
    JSON value (the converter rejects it), or `Unreadable`."""
    files = data_files(path)
    records = []
    for file in files:
        prefix = f"{file.name}:" if path.is_dir() or _is_glob(path) else ""
        for i, record in enumerate(_read_file(file)):
            records.append((f"{prefix}{i}", record))
    return records


def _read_file(file: Path) -> list[Any]:
    kind = file.suffix.lstrip(".").lower()
    if kind == "jsonl":
        return _json_lines(_without_bom(file.read_bytes()))
    if kind == "json":
        return _json_document(file)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file).to_pylist()
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataError(f"{file}: cannot be read as parquet: {err}") from err
    if kind == "arrow":
        return _arrow(file)
    return _csv(file)


def _arrow(file: Path) -> list[Any]:
    import pyarrow as pa

    try:
        with pa.memory_map(str(file)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()  # what `datasets` writes
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{file}: cannot be read as an Arrow file: {err}") from err
    return table.to_pylist()


def _json_lines(data: bytes) -> list[Any]:
    records: list[Any] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            records.append(
                Unreadable(
                    "undecodable text", f"the line is not valid UTF-8 ({err.reason} at byte {err.start})"
                )
            )
            continue
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError as err:
            records.append(
                Unreadable("invalid JSON", f"the line is not valid JSON ({err.msg} at column {err.colno})")
            )
        except RecursionError:  # json raises it, not JSONDecodeError, past ~1000 levels of nesting
            records.append(Unreadable("invalid JSON", "the line is nested too deeply to parse"))
    return records


def _without_bom(data: bytes) -> bytes:
    """Files saved by some Windows editors start with a UTF-8 byte order mark; json refuses it."""
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def _json_document(file: Path) -> list[Any]:
    data = _without_bom(file.read_bytes())
    text = data.decode("utf-8", errors="surrogateescape")  # bad bytes -> lone surrogates, reported per row
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        first = text.lstrip()[:1]
        if first == "{" and "\n" in text.strip():  # JSON Lines in a .json file (datasets reads those too)
            return _json_lines(data)
        raise DataError(f"{file}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except RecursionError:  # json raises it, not JSONDecodeError, past ~1000 levels of nesting
        raise DataError(f"{file}: not valid JSON: nested too deeply to parse") from None
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        lengths = {len(v) for v in doc.values()}
        if len(lengths) != 1:
            raise DataError(
                f"{file}: a JSON object of columns needs columns of one length, got {sorted(lengths)}"
            )
        columns = list(doc)
        return [dict(zip(columns, values)) for values in zip(*doc.values())]
    raise DataError(f"{file}: expected a JSON list of records (or an object of equal-length columns)")


def _csv(file: Path) -> list[Any]:
    import pandas as pd

    try:
        frame = pd.read_csv(file, encoding_errors="surrogateescape")
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{file}: cannot be read as CSV: {err}") from err
    records = frame.to_dict("records")
    for record in records:  # pandas marks empty cells NaN: they are missing values, not numbers
        for key, value in record.items():
            if isinstance(value, float) and math.isnan(value):
                record[key] = None
    return records
