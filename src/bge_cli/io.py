"""Reading texts from files as a stream, and writing results without ever leaving a half-written file.

Readers yield one `Record` at a time, so a file of any size is read in constant memory. Every
problem with the input is an `InputError` whose message starts with ``path:line:`` (``path: row N:``
for Parquet), the form editors and terminals turn into a link.

Writers write into a temporary file beside the target and move it into place with `os.replace` only
once everything is written: a failed or interrupted run leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from bge_core.errors import BgeCoreError

if TYPE_CHECKING:  # imported where used: reading text or JSONL never loads pyarrow
    import pyarrow as pa

T = TypeVar("T")

#: File suffix → input format.
FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class InputError(BgeCoreError, ValueError):
    """An input file is missing, unreadable or malformed; the message names the file (and line).

    Example:
        >>> raise InputError("docs.jsonl:7: no \\"text\\" field")
    """


@dataclass(frozen=True)
class Record:
    """One text read from a file.

    Attributes:
        text: the text.
        id: the id field's value (as str) when the input has one, else None.
        line: 1-based line (.txt, .jsonl) or row (.parquet) it came from.
        metadata: for .jsonl, the line's other fields.
    """

    text: str
    id: str | None = None
    line: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def input_format(path: str | os.PathLike[str]) -> str:
    """``"txt"``, ``"jsonl"`` or ``"parquet"`` from the file name; `InputError` for anything else.

    Example:
        >>> input_format("corpus.jsonl")
        'jsonl'
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise InputError(f"{os.fspath(path)}: unsupported input format {suffix or '(no suffix)'!r}; "
                         "expected .txt (a text per line), .jsonl or .parquet")
    return FORMATS[suffix]


def read_records(
    path: str | os.PathLike[str], *, text_field: str = "text", id_field: str = "id", batch_rows: int = 4096
) -> Iterator[Record]:
    """Stream the texts of a .txt (one per non-blank line), .jsonl (one object per line) or .parquet file.

    Args:
        path: the input file.
        text_field: the .jsonl key / .parquet column holding the text.
        id_field: the .jsonl key / .parquet column holding an id (optional; str or int).
        batch_rows: Parquet rows read at a time.

    Raises:
        InputError: the file is missing or unreadable, a line is not UTF-8 or not a JSON object,
            lacks the text field or has a non-string text (message: ``path:line: …``).

    Example:
        >>> [r.text for r in read_records("questions.txt")]
        ['What is BGE-M3?', 'Where do pandas live?']
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        raise InputError(f"{name}: is a directory, not a file")
    kind = input_format(name)
    if kind == "parquet":
        return _read_parquet(name, text_field, id_field, batch_rows)
    return _read_lines(name, kind, text_field, id_field)


def scan(path: str | os.PathLike[str], *, text_field: str = "text", id_field: str = "id") -> int:
    """Check a whole input file without keeping it in memory; returns its number of records.

    Run before any work so that bad input is reported before anything is computed or written.

    Example:
        >>> scan("corpus.jsonl")
        42
    """
    return sum(1 for _ in read_records(path, text_field=text_field, id_field=id_field))


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items, pulling only one list's worth at a time.

    Example:
        >>> list(chunked(range(5), 2))
        [[0, 1], [2, 3], [4]]
    """
    iterator = iter(items)
    while chunk := list(islice(iterator, max(1, size))):
        yield chunk


def _open(name: str, mode: str = "rb") -> Any:
    try:
        return open(name, mode)  # the caller closes it
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{name}: cannot read (permission denied)") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from None


def _lines(name: str) -> Iterator[bytes]:
    """The file's lines; a read that fails half-way (I/O error, a file that is not a regular file) is an InputError."""
    with _open(name) as fh:
        try:
            yield from fh
        except OSError as error:
            raise InputError(f"{name}: cannot read ({error.strerror or error})") from None


def _read_lines(name: str, kind: str, text_field: str, id_field: str) -> Iterator[Record]:
    for number, raw in enumerate(_lines(name), start=1):
        # Binary lines split on "\n" only: a text may hold other Unicode line separators.
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not text
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{name}:{number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
            ) from None
        if not line.strip():
            continue  # blank lines separate nothing and embed to nothing useful
        if kind == "txt":
            yield Record(text=line, line=number)
        else:
            yield _json_record(line, name, number, text_field, id_field)


def _json_record(line: str, name: str, number: int, text_field: str, id_field: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{name}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{name}:{number}: expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj:
        fields = ", ".join(map(str, obj)) or "none"
        raise InputError(f'{name}:{number}: no "{text_field}" field (fields: {fields})')
    text = obj[text_field]
    if not isinstance(text, str):
        raise InputError(f'{name}:{number}: "{text_field}" must be a string, got {type(text).__name__}')
    return Record(
        text=text, id=_id_value(obj.get(id_field), f"{name}:{number}", id_field), line=number,
        metadata={k: v for k, v in obj.items() if k not in (text_field, id_field)},
    )


def _id_value(value: Any, where: str, id_field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f'{where}: "{id_field}" must be a string or an integer, got {type(value).__name__}')
    text = str(value)
    if not text:
        raise InputError(f'{where}: "{id_field}" is empty')
    return text


def _read_parquet(name: str, text_field: str, id_field: str, batch_rows: int) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _open(name).close()  # the same messages as the line formats for a missing or unreadable file
    try:
        source = pq.ParquetFile(name)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{name}: not a readable Parquet file ({error})") from None
    schema = source.schema_arrow
    if text_field not in schema.names:
        raise InputError(f'{name}: no "{text_field}" column (columns: {", ".join(schema.names) or "none"})')
    text_type = schema.field(text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise InputError(f'{name}: column "{text_field}" must hold strings, it holds {text_type}')
    columns = [text_field] + ([id_field] if id_field in schema.names and id_field != text_field else [])
    row = 0
    with contextlib.closing(source):
        for batch in _batches(source, name, batch_rows, columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
            for text, row_id in zip(texts, ids):
                row += 1
                if text is None:
                    raise InputError(f'{name}: row {row}: "{text_field}" is null')
                yield Record(text=text, id=_id_value(row_id, f"{name}: row {row}", id_field), line=row)


def _batches(source: Any, name: str, batch_rows: int, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    try:
        yield from source.iter_batches(batch_size=batch_rows, columns=columns)
    except (pa.ArrowException, OSError) as error:  # a damaged row group, an I/O error
        raise InputError(f"{name}: cannot read ({error})") from None


# -- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path beside `path`; moved onto `path` if the block succeeds, deleted if it fails.

    Raises:
        InputError: the target's folder does not exist (nothing is created).

    Example:
        >>> with atomic_output("vectors.parquet") as tmp:
        ...     write_everything(tmp)   # an exception here leaves vectors.parquet untouched
    """
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise InputError(f"{os.fspath(path)}: output folder {folder} does not exist")
    if os.path.isdir(target):
        raise InputError(f"{os.fspath(path)}: is a directory, not a file")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:  # Ctrl-C too: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


class ParquetSink:
    """Writes encoded chunks as row groups of one Parquet file.

    Columns: ``id`` (string), ``text`` (string), then as asked ``dense`` (fixed-size list of float32),
    ``sparse_indices`` (list of int32 token ids) with ``sparse_values`` (list of float32 weights), and
    ``colbert`` (list of fixed-size lists of float32: one vector per token after CLS).

    Example:
        >>> with ParquetSink(tmp, dense_dim=1024) as sink:
        ...     sink.write(["a"], ["hello"], embedder.encode(["hello"]))
    """

    def __init__(self, path: str, *, dense_dim: int | None = None, sparse: bool = False,
                 colbert_dim: int | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        fields = [pa.field("id", pa.string()), pa.field("text", pa.string())]
        if dense_dim is not None:
            fields.append(pa.field("dense", pa.list_(pa.float32(), dense_dim)))
        if sparse:
            fields += [pa.field("sparse_indices", pa.list_(pa.int32())),
                       pa.field("sparse_values", pa.list_(pa.float32()))]
        if colbert_dim is not None:
            fields.append(pa.field("colbert", pa.list_(pa.list_(pa.float32(), colbert_dim))))
        self.schema = pa.schema(fields)
        self.dense_dim, self.sparse, self.colbert_dim = dense_dim, sparse, colbert_dim
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows = 0

    def write(self, ids: list[str], texts: list[str], out: Any) -> None:
        """Append one chunk (`out` is the `Embeddings` of `texts`)."""
        pa = self.pa
        columns: list[Any] = [pa.array(ids, pa.string()), pa.array(texts, pa.string())]
        if self.dense_dim is not None:
            columns.append(dense_column(out.dense))
        if self.sparse:
            columns.extend(sparse_columns(out.lexical_weights))
        if self.colbert_dim is not None:
            columns.append(colbert_column(out.colbert_vectors, self.colbert_dim))
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows += len(ids)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NpySink:
    """Writes dense vectors into one ``.npy`` file (float32, shape (n, dim)) as they come.

    The row count is unknown until the end, so a fixed-size header is reserved first and rewritten
    with the final shape on close; `numpy.load` (also with ``mmap_mode``) reads the result.

    Example:
        >>> with NpySink(tmp, dim=1024) as sink:
        ...     sink.write(["a"], ["hello"], embedder.encode(["hello"]))
    """

    HEADER_BYTES = 128  # a multiple of 64, as the .npy format asks, with room for any shape

    def __init__(self, path: str, *, dim: int) -> None:
        self.dim = dim
        self.rows = 0
        self.fh = open(path, "wb")  # closed in close()
        self.fh.write(self._header())

    def _header(self) -> bytes:
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.rows}, {self.dim}), }}"
        # magic (6) + version (2) + header length (2), then the dict padded with spaces, ending in "\n"
        body = header.ljust(self.HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def write(self, ids: list[str], texts: list[str], out: Any) -> None:
        """Append the dense vectors of one chunk."""
        self.fh.write(np.ascontiguousarray(out.dense, dtype="<f4").tobytes())
        self.rows += len(ids)

    def close(self) -> None:
        if self.fh.closed:
            return
        self.fh.seek(0)
        self.fh.write(self._header())
        self.fh.close()

    def __enter__(self) -> NpySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- terminal tables ------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: wide (CJK) characters count 2, combining marks 0.

    Example:
        >>> display_width("大熊猫"), display_width("panda")
        (6, 5)
    """
    import unicodedata

    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def excerpt(text: str, width: int) -> str:
    """`text` on one line, cut to at most `width` terminal columns (ending in "…" when cut).

    Example:
        >>> excerpt("The giant panda\\nlives in China.", 20)
        'The giant panda liv…'
    """
    flat = " ".join(text.split())
    if display_width(flat) <= width:
        return flat
    out, used = [], 0
    for char in flat:
        w = display_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def format_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table: a header line, a rule, one line per row; columns in `right` right-aligned.

    Example:
        >>> print(format_table(["rank", "id"], [["1", "en-01"]], right={0}))
        rank  id
        ----  -----
           1  en-01
    """
    right = right or set()
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - display_width(cell))
            padded.append(pad + cell if i in right else cell + pad)
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


# -- vector columns (the `bge encode` Parquet layout; `bge_ray` writes the same) ------------------------


def dense_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, dim) matrix as a fixed-size-list<float32, dim> column (the `bge encode` Parquet layout)."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def sparse_columns(rows: Sequence[dict[int, float]]) -> tuple[pa.ListArray, pa.ListArray]:
    """``{token_id: weight}`` rows as list<int32> token ids (sorted) and list<float32> weights."""
    import pyarrow as pa

    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    keys = [sorted(r) for r in rows]
    total = int(offsets[-1])
    indices = np.fromiter((t for k in keys for t in k), dtype=np.int32, count=total)
    values = np.fromiter((r[t] for r, k in zip(rows, keys) for t in k), dtype=np.float32, count=total)
    return (pa.ListArray.from_arrays(pa.array(offsets), pa.array(indices)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))


def colbert_column(vectors: Sequence[np.ndarray], dim: int) -> pa.ListArray:
    """Per text a (tokens, dim) array as list<fixed-size-list<float32, dim>>."""
    import pyarrow as pa

    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(v) for v in vectors])
    flat = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in vectors]) if len(vectors) \
        else np.zeros(0, dtype=np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), dim))
