"""Checking and converting the rows of Ray Data blocks (Arrow tables): texts, ids, metadata, vector columns.

Everything here works on one `pyarrow.Table` at a time, so it runs inside Ray tasks and actors as well
as on the driver. Bad rows are reported by their position in the table; `bge_ray.validate` turns that
position into a row number of the whole dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bge_core.errors import BgeCoreError


class BadRowError(BgeCoreError, ValueError):
    """A row of the input cannot be used (missing or non-string text, bad id, …); the message names
    the column and the row.

    Example:
        >>> raise BadRowError("row 7 (id 'doc-7'): column 'text' must hold a string, got int")
    """


def _is_string_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def texts_of(table: pa.Table, column: str) -> tuple[list[str] | None, int, str]:
    """The column's texts, or None with the position of the first bad row and what is wrong with it.

    A column that is absent, null in a row, or holds a non-string is bad; ``""`` is a valid text.

    Example:
        >>> texts_of(pa.table({"text": ["a", None]}), "text")
        (None, 1, "column 'text' is missing (null)")
    """
    if column not in table.column_names:
        if table.num_rows == 0:
            return [], -1, ""
        return None, 0, f"no column {column!r} (columns: {', '.join(table.column_names) or 'none'})"
    values = table.column(column)
    # The common case costs one C-level null count and one list conversion.
    items = values.to_pylist()
    if _is_string_type(values.type) and values.null_count == 0:
        return items, -1, ""
    for i, item in enumerate(items):
        if item is None:
            return None, i, f"column {column!r} is missing (null)"
        if not isinstance(item, str):
            return None, i, f"column {column!r} must hold a string, got {type(item).__name__}"
    return items, -1, ""


def id_text(value: Any) -> str:
    """A row id as str: strings as they are, integers (also integral floats, which JSON readers make of
    integer ids in columns with nulls) in decimal.

    Raises:
        ValueError: the id is null, empty, a bool, a fraction or another type.

    Example:
        >>> id_text(7), id_text(7.0), id_text("doc-7")
        ('7', '7', 'doc-7')
    """
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if value is None or value == "":
        raise ValueError("is missing (null or empty)")
    raise ValueError(f"must be a string or an integer, got {type(value).__name__} {value!r}")


def ids_of(table: pa.Table, column: str | None, max_bytes: int | None = None,
           default: Callable[[int], str] | None = None) -> tuple[list[str] | None, int, str]:
    """The id column as strings (`id_text`), or None with the first bad row's position and problem.

    A null id is a bad row, unless `default` gives the id of row i (e.g. the content id of its text).

    Example:
        >>> ids_of(pa.table({"id": [1, 2]}), "id")
        (['1', '2'], -1, '')
    """
    if column is None or column not in table.column_names:
        return None, -1, ""
    out = []
    for i, value in enumerate(table.column(column).to_pylist()):
        if value is None and default is not None:
            out.append(default(i))
            continue
        try:
            text = id_text(value)
        except ValueError as error:
            return None, i, f"column {column!r} {error}"
        if max_bytes is not None and len(text.encode("utf-8")) > max_bytes:
            return None, i, f"column {column!r} is longer than {max_bytes} bytes"
        out.append(text)
    return out, -1, ""


def first_problem(
    table: pa.Table, text_column: str, id_column: str | None = None, *, max_text_bytes: int | None = None,
    max_id_bytes: int | None = None, metadata_columns: Sequence[str] | None = None, null_ids: bool = False,
) -> tuple[int, str]:
    """Position and description of the first bad row of `table`, or ``(-1, "")`` when all rows are good.

    Checks: the text column exists and holds strings (`texts_of`), texts fit `max_text_bytes` (UTF-8),
    ids are strings or integers of at most `max_id_bytes` (or null, with `null_ids`), and `metadata_columns`
    are JSON-serialisable.

    Example:
        >>> first_problem(pa.table({"text": ["a", "b"]}), "text")
        (-1, '')
    """
    texts, row, problem = texts_of(table, text_column)
    if texts is None:
        return row, problem
    if max_text_bytes is not None:
        for i, text in enumerate(texts):
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                return i, f"column {text_column!r} is not valid Unicode (a lone surrogate)"
            if size > max_text_bytes:
                return i, f"column {text_column!r} is longer than {max_text_bytes} bytes"
    _, row, problem = ids_of(table, id_column, max_id_bytes, default=str if null_ids else None)
    if row >= 0:
        return row, problem
    for i, meta in enumerate(metadata_of(table, metadata_columns or [])):
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as error:
            return i, f"metadata is not JSON-serialisable ({error})"
    return -1, ""


def describe_row(table: pa.Table, row: int, id_column: str | None) -> str:
    """``"row 3 of the batch (id 'doc-3')"``-style name of a row, for errors raised inside a batch."""
    label = f"row {row + 1} of the batch"
    if id_column and id_column in table.column_names and 0 <= row < table.num_rows:
        label += f" (id {table.column(id_column)[row].as_py()!r})"
    return label


def metadata_of(table: pa.Table, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Per row a dict of the `columns` that are not null there.

    Readers of JSON lines give every row every key of the file (null where a line lacks it); such
    nulls are left out, so a row's metadata holds the keys its line had.

    Example:
        >>> metadata_of(pa.table({"lang": ["en", None]}), ["lang"])
        [{'lang': 'en'}, {}]
    """
    rows: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for name in columns:
        for row, value in zip(rows, table.column(name).to_pylist()):
            if value is not None:
                row[name] = value
    return rows


# -- vector columns -------------------------------------------------------------------------------------


def dense_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A dense column (fixed-size list, list, or Ray's tensor extension type) as an (n, dim) float32 matrix."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type) and array.null_count == 0:
        return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(
            len(array), array.type.list_size)
    if hasattr(array, "to_numpy") and isinstance(array.type, pa.ExtensionType):
        return np.asarray(array.to_numpy(), dtype=np.float32).reshape(len(array), -1)
    return np.asarray([np.asarray(v, dtype=np.float32) for v in array.to_pylist()], dtype=np.float32)


def sparse_dicts(indices: pa.ChunkedArray | pa.Array, values: pa.ChunkedArray | pa.Array) -> list[dict[int, float]]:
    """``sparse_indices`` / ``sparse_values`` columns back to ``{token_id: weight}`` rows."""
    return [{int(t): float(w) for t, w in zip(ids or [], weights or [])}
            for ids, weights in zip(indices.to_pylist(), values.to_pylist())]
