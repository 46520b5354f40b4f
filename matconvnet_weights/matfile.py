"""Read any MATLAB `.mat` file into one plain-Python representation.

MATLAB writes model files in two container formats: v5/v7 (read with
`scipy.io.loadmat`) and v7.3, which is HDF5 with a 512-byte MATLAB header
(read here with h5py, walking MATLAB's own conventions; `mat73` decodes the
rare classes this walker does not know, such as sparse matrices). Both come
out in the same shape, so the layout readers see one representation:

| MATLAB | Python |
|---|---|
| 1x1 struct | `dict` (field order kept) |
| struct array of any other size | `list` of `dict`, column-major order |
| cell array | `list`, column-major order |
| 1xN char | `str` (an MxN char matrix: `list` of `str`) |
| numeric / logical | `numpy.ndarray` with MATLAB's own dimensions (at least 2) |
| object, function handle | `OpaqueValue(class_name)` |

Corrupt files end in one `CqdError` line, never a MemoryError or a hang:
sizes a file declares are checked against the file's size before anything
is allocated (a v5 element longer than the file; a v7.3 dataset declaring
more bytes than its stored chunks could expand to, or than the machine's
memory), HDF5 object references are followed with cycle detection and a
depth limit, and an allocation that still fails is reported as a corrupt
file. v5 values nested more than `_MAX_DEPTH` deep (a cell in a cell in a
cell...) are refused from their element tags (`_NestingScanner`) before
`scipy.io.loadmat` sees them: it recurses in C and would overflow the stack.

Unlike `scipy.io.loadmat(squeeze_me=True)` and `mat73` (which squeeze
singleton dimensions), arrays keep exactly the dimensions MATLAB saved:
MATLAB only drops *trailing* singleton dimensions, which
`cqd_port.layout.pad_trailing_dims` restores. Arrays are column-major views
(`order='F'`), never copied on the way: a 400 MB model is held once.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class OpaqueValue:
    """A MATLAB value with no plain representation (a class object, a function handle)."""

    class_name: str


def load_mat(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load every variable of a MAT v4/v5/v7/v7.3 file as plain Python (see the module table).

    Raises `CqdError` naming the file when it is missing, empty, truncated,
    corrupt or not a MAT file at all.
    """
    path = Path(path)
    if not path.exists():
        raise CqdError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise CqdError(f"{path}: is a directory, not a .mat file; pass the model file itself")
    try:
        with open(path, "rb") as handle:
            head = handle.read(520)
    except OSError as exc:
        raise CqdError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not head:
        raise CqdError(f"{path}: the file is empty, not a MAT file; re-download or re-export it")
    if head[:4] == b"PK\x03\x04":
        raise CqdError(
            f"{path}: is a zip archive (a PyTorch checkpoint?), not a MAT file; "
            "pass the MatConvNet .mat model, or use the checkpoint directly"
        )
    if head[512:520] == HDF5_SIGNATURE or head[:8] == HDF5_SIGNATURE:
        return _guarded(path, "MAT v7.3 (HDF5)", _load_hdf5)
    return _guarded(path, "MAT v5/v7", _load_scipy)


def _guarded(path: Path, kind: str, loader) -> dict[str, Any]:
    # Every backend failure (truncation, bad zlib stream, garbage header) becomes
    # one CqdError line naming the file; memory exhaustion is not a user error.
    try:
        return loader(path)
    except CqdError:
        raise
    except MemoryError:
        raise CqdError(
            f"{path}: declares more data than fits in memory (a corrupt size field, or a model larger than "
            "this machine's memory); re-download it or save it again from MATLAB"
        ) from None
    except RecursionError:
        raise CqdError(f"{path}: its values nest too deeply (a corrupt {kind} file); re-download it or save it again") from None
    except Exception as exc:  # noqa: BLE001 - the backends raise a dozen exception types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CqdError(
            f"{path}: not a readable {kind} file ({reason}); the file is truncated, corrupt "
            "or not a MAT file: re-download it or save it again from MATLAB"
        ) from None


# ----------------------------------------------------------------------------- v5 / v7


def _check_v5_elements(path: Path) -> None:
    """Walk the top-level data elements of a v5 file: each declared length must fit in the file.

    scipy trusts these lengths (and would ask for a buffer of the declared
    size); a compressed element must also hold a zlib stream. Every matrix,
    compressed or not, is also scanned for its nesting depth.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(128)
        if len(header) < 128:
            return  # scipy's own error says what is wrong
        endian = "<" if header[126:128] == b"IM" else ">"
        is_v5 = header[126:128] in (b"IM", b"MI")
        offset = 128
        while offset + 8 <= size:
            handle.seek(offset)
            tag = handle.read(8)
            dtype, nbytes = np.frombuffer(tag, dtype=f"{endian}u4", count=2)
            if dtype >> 16:  # a small data element packed in the tag
                offset += 8
                continue
            if offset + 8 + int(nbytes) > size:
                raise CqdError(
                    f"{path}: an element at byte {offset} declares {int(nbytes):,} bytes but only "
                    f"{size - offset - 8:,} remain; the file is truncated or corrupt: re-download it or save it again"
                )
            if dtype == _MI_COMPRESSED:
                _check_compressed_matrix(path, handle, offset, int(nbytes), endian)
            elif dtype == _MI_MATRIX and is_v5:
                _scan_stored_matrix(path, handle, offset, int(nbytes), endian)
            offset += 8 + int(nbytes) + ((-int(nbytes)) % 8 if dtype != _MI_COMPRESSED else 0)


_MI_COMPRESSED, _MI_MATRIX, _MI_INT32 = 15, 14, 5
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_SPARSE = 1, 2, 3, 5


class _NestingScanner:
    """Follows the element tags of a v5 matrix as its bytes arrive, without recursion, and fails
    as soon as matrices nest more than `_MAX_DEPTH` deep.

    A matrix (miMATRIX) holds sub-elements; those that are matrices again (the cells of a
    cell array, the fields of a struct, an object's contents) nest one level deeper; the
    others (flags, dimensions, names, numbers) are skipped by their declared length. Only
    the open matrices' end offsets are kept, so memory does not grow with the data.
    """

    def __init__(self, endian: str, fail) -> None:
        self.tag = struct.Struct(endian + "II")
        self.fail = fail
        self.received = 0  # stream offset just past the bytes fed so far
        self.next_tag = 0  # stream offset of the next element tag
        self.pending = b""  # the start of a tag split between two pieces
        self.ends: list[int] = []  # end offsets of the open matrices

    def wanted(self) -> int:
        """The next stream offset the scanner needs (it may skip ahead to it)."""
        return max(self.received, self.next_tag)

    def skip_to(self, offset: int) -> None:
        """The bytes before `offset` (inside a skipped element) will not be fed."""
        if offset > self.received:
            self.received, self.pending = offset, b""

    def feed(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        start = self.received - len(self.pending)
        ends, next_tag = self.ends, self.next_tag
        while True:
            while ends and next_tag >= ends[-1]:
                ends.pop()
            at = next_tag - start
            if at + 8 > len(buffer):
                break
            dtype, nbytes = self.tag.unpack_from(buffer, at)
            if dtype >> 16:  # a small element packed in its tag
                next_tag += 8
            elif dtype == _MI_MATRIX:
                ends.append(next_tag + 8 + nbytes)
                next_tag += 8
                if len(ends) > _MAX_DEPTH:
                    raise self.fail(f"holds values nested more than {_MAX_DEPTH} deep (cells or structs inside each other)")
            else:
                next_tag += 8 + nbytes + (-nbytes) % 8
        self.next_tag = next_tag
        self.received += len(data)
        at = next_tag - start
        self.pending = bytes(buffer[at:]) if 0 <= at < len(buffer) else b""


def _scan_stored_matrix(path: Path, handle, offset: int, nbytes: int, endian: str) -> None:
    """The nesting depth of an uncompressed top-level matrix, reading only its tags."""
    scanner = _NestingScanner(endian, lambda what: CqdError(
        f"{path}: the variable at byte {offset} {what}; the file is corrupt: re-download it or save it again"
    ))
    total = 8 + nbytes
    while (want := scanner.wanted()) < total:
        scanner.skip_to(want)
        handle.seek(offset + want)
        piece = handle.read(min(1 << 16, total - want))
        if not piece:
            return
        scanner.feed(piece)


def _check_compressed_matrix(path: Path, handle, offset: int, nbytes: int, endian: str) -> None:
    """A compressed top-level variable: its stream must inflate to at least what its matrix
    declares, and the declared dimensions must fit in that (at least 1 byte per number, a
    tag of 8 bytes per cell or struct element). Inflated in pieces: the check holds
    almost nothing in memory, and a stream inflating past zlib's best ratio is refused."""
    import zlib

    fail = lambda what: CqdError(  # noqa: E731
        f"{path}: the variable at byte {offset} {what}; the file is corrupt: re-download it or save it again"
    )
    inflater = zlib.decompressobj()
    scanner = _NestingScanner(endian, fail)
    handle.seek(offset + 8)
    remaining, head, total = nbytes, b"", 0
    limit = max(nbytes * _MAX_EXPANSION, 1 << 20)
    try:
        while remaining > 0:
            piece = handle.read(min(remaining, 1 << 20))
            if not piece:
                break
            remaining -= len(piece)
            out = inflater.decompress(piece, 1 << 22)
            while True:
                total += len(out)
                if len(head) < 64:
                    head += out[: 64 - len(head)]
                scanner.feed(out)
                if total > limit:
                    raise fail(f"inflates past {limit:,} bytes (more than zlib can compress)")
                if not inflater.unconsumed_tail:
                    break
                out = inflater.decompress(inflater.unconsumed_tail, 1 << 22)
    except zlib.error:
        return  # scipy reports the broken stream itself, in one line
    if len(head) < 40:
        return
    kind, declared = np.frombuffer(head[:8], dtype=f"{endian}u4", count=2)
    if kind != _MI_MATRIX:
        return
    if int(declared) + 8 > total:
        raise fail(f"declares a {int(declared):,}-byte matrix but holds {total - 8:,} bytes")
    flags_type, _ = np.frombuffer(head[8:16], dtype=f"{endian}u4", count=2)
    array_class = int(np.frombuffer(head[16:20], dtype=f"{endian}u4", count=1)[0]) & 0xFF
    dims_type, dims_bytes = np.frombuffer(head[24:32], dtype=f"{endian}u4", count=2)
    if dims_type != _MI_INT32 or dims_bytes % 4 or 32 + int(dims_bytes) > len(head) or array_class in (_MX_SPARSE, _MX_OBJECT):
        return
    dims = np.frombuffer(head[32 : 32 + int(dims_bytes)], dtype=f"{endian}i4")
    if (dims < 0).any():
        raise fail(f"declares negative dimensions {dims.tolist()}")
    per_element = 8 if array_class in (_MX_CELL, _MX_STRUCT) else 1
    if float(np.prod(dims.astype(np.float64))) * per_element > int(declared):
        raise fail(f"declares dimensions {'x'.join(map(str, dims.tolist()))}, more than its {int(declared):,} bytes can hold")


def _load_scipy(path: Path) -> dict[str, Any]:
    import scipy.io

    _check_v5_elements(path)
    raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False, chars_as_strings=True)
    out: dict[str, Any] = {}
    for name in list(raw):
        if name.startswith("__"):
            continue
        # pop as we go so the raw tree does not keep a second reference to each array
        out[name] = _from_scipy(raw.pop(name))
    return out


def _from_scipy(value: Any) -> Any:
    from scipy.io.matlab import mat_struct

    if isinstance(value, mat_struct):
        return {field: _from_scipy(getattr(value, field)) for field in value._fieldnames}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            items = [_from_scipy(item) for item in value.ravel(order="F")]
            # a 1x1 struct is a dict; any other struct array (and every cell) a list
            if value.size == 1 and isinstance(value.flat[0], mat_struct):
                return items[0]
            return items
        if value.dtype.kind == "U":
            return _strings(value.ravel(order="F").tolist())
        if value.dtype.names is not None:  # an old-style MATLAB object record
            return OpaqueValue(getattr(value, "classname", "object"))
        return _native(value)
    if type(value).__name__ in ("MatlabOpaque", "MatlabFunction", "MatlabObject"):
        return OpaqueValue(str(getattr(value, "classname", type(value).__name__)))
    return value


def _strings(rows: list[str]) -> str | list[str]:
    if len(rows) == 0:
        return ""
    if len(rows) == 1:
        return rows[0]
    return rows


def _native(array: np.ndarray) -> np.ndarray:
    """Native byte order (torch.from_numpy refuses big-endian data); no copy otherwise."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="), order="K")
    if array.ndim < 2:
        array = array.reshape(array.shape + (1,) * (2 - array.ndim), order="F")
    return array


# ----------------------------------------------------------------------------- v7.3 (HDF5)

_NUMERIC_CLASSES = {
    "double", "single", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "logical",
}


def _load_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as handle:
        reader = _Hdf5Reader(handle, path)
        return {name: reader.value(handle[name]) for name in handle if not name.startswith("#")}


# zlib's best case is about 1032:1; a dataset expanding more than this is corrupt.
_MAX_EXPANSION = 1100
_MAX_DEPTH = 64


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


class _Hdf5Reader:
    """MATLAB's v7.3 conventions: every variable carries a `MATLAB_class` attribute;
    arrays are stored with their dimensions reversed (HDF5 is row-major); a 1x1 struct
    is a group of fields; a struct array is a group whose fields are datasets of object
    references (no `MATLAB_class`), one per element; a cell array is a dataset of object
    references into `#refs#`; char arrays are uint16 code units; empty arrays are a
    dataset of their dimensions with the `MATLAB_empty` attribute."""

    def __init__(self, handle, path: Path | None = None) -> None:
        self.handle = handle
        self.path = path or Path(str(handle.filename))
        self.file_size = self.path.stat().st_size if self.path.exists() else 0
        self.memory = _memory_bytes()
        self._open: list[int] = []  # the objects being decoded (cycle detection)

    def _fail(self, message: str) -> CqdError:
        return CqdError(f"{self.path}: {message}; the file is corrupt: re-download it or save it again from MATLAB")

    def _read(self, dataset) -> np.ndarray:
        """The dataset's data, after checking its declared size against what the file stores."""
        declared = int(np.prod(dataset.shape, dtype=np.float64) * dataset.dtype.itemsize) if dataset.shape else dataset.dtype.itemsize
        stored = int(dataset.id.get_storage_size())
        limit = stored if dataset.chunks is None else stored * _MAX_EXPANSION
        if declared > max(limit, 1 << 16) or (dataset.chunks is None and declared > self.file_size):
            raise self._fail(
                f"dataset '{dataset.name}' declares {declared:,} bytes ({'x'.join(map(str, dataset.shape))}) "
                f"but stores {stored:,}"
            )
        if self.memory is not None and declared > self.memory:
            raise self._fail(f"dataset '{dataset.name}' declares {declared:,} bytes, more than this machine's memory")
        return dataset[()]

    def _deref(self, ref) -> Any:
        if not ref:
            raise self._fail("a null object reference")
        try:
            return self.handle[ref]
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise self._fail(f"an object reference that cannot be followed ({exc})") from None

    def value(self, node) -> Any:
        key = hash(node.id)
        if key in self._open:
            raise self._fail(f"object '{node.name}' refers back to itself (a reference cycle)")
        if len(self._open) >= _MAX_DEPTH:
            raise self._fail(f"values nested more than {_MAX_DEPTH} deep")
        self._open.append(key)
        try:
            return self._value(node)
        finally:
            self._open.pop()

    def _value(self, node) -> Any:
        import h5py

        cls = _attr_str(node.attrs.get("MATLAB_class"))
        if isinstance(node, h5py.Group):
            if "MATLAB_sparse" in node.attrs or (cls is not None and cls not in ("struct",)):
                return self._fallback(node, cls)
            return self._struct(node)
        if "MATLAB_empty" in node.attrs and int(np.asarray(node.attrs["MATLAB_empty"]).ravel()[0]):
            return self._empty(node, cls)
        if cls == "cell" or (cls is None and h5py.check_ref_dtype(node.dtype) is not None):
            return [self.value(self._deref(ref)) for ref in np.asarray(self._read(node)).ravel(order="C")]
        if cls == "char":
            return self._char(node)
        if cls in _NUMERIC_CLASSES:
            data = self._read(node)
            if data.dtype.names and {"real", "imag"} <= set(data.dtype.names):
                data = data["real"] + 1j * data["imag"]
            array = np.asarray(data).T  # reversed HDF5 dims -> MATLAB dims, column-major view
            if cls == "logical":
                array = array.astype(bool)
            return _native(array)
        if cls == "struct":  # a struct with no fields stored as a dataset
            return {}
        return self._fallback(node, cls)

    def _struct(self, group) -> dict[str, Any] | list[dict[str, Any]]:
        import h5py

        names = _field_names(group)
        fields = [group[name] for name in names]
        is_array = bool(fields) and all(
            isinstance(f, h5py.Dataset) and h5py.check_ref_dtype(f.dtype) is not None and "MATLAB_class" not in f.attrs
            for f in fields
        )
        if not is_array:
            return {name: self.value(field) for name, field in zip(names, fields)}
        refs = {name: np.asarray(self._read(field)).ravel(order="C") for name, field in zip(names, fields)}
        count = len(next(iter(refs.values())))
        if any(len(r) != count for r in refs.values()):
            raise self._fail(f"struct array '{group.name}' has fields of different lengths")
        items = [{name: self.value(self._deref(refs[name][i])) for name in names} for i in range(count)]
        return items[0] if count == 1 else items  # a 1x1 struct is a dict, as from scipy

    def _empty(self, node, cls: str | None) -> Any:
        if cls == "char":
            return ""
        if cls in ("cell", "struct"):
            return []
        dims = tuple(int(d) for d in np.asarray(self._read(node)).ravel())
        if any(d < 0 for d in dims) or (dims and 0 not in dims):
            raise self._fail(f"empty array '{node.name}' declares dimensions {dims}")
        dtype = np.float64 if cls in (None, "double") else (bool if cls == "logical" else np.dtype(_MATLAB_DTYPES.get(cls, "float64")))
        return np.zeros(dims if len(dims) >= 2 else (0, 0), dtype=dtype)

    def _char(self, node) -> str | list[str]:
        codes = np.asarray(self._read(node)).T  # MATLAB rows x columns
        if codes.ndim == 1:
            codes = codes[None, :]
        rows = [codes[i].astype("<u2").tobytes().decode("utf-16-le", errors="replace") for i in range(codes.shape[0])]
        return _strings(rows)

    def _fallback(self, node, cls: str | None) -> Any:
        # mat73 knows sparse matrices and a few other classes; objects and
        # function handles have no plain form.
        if cls in ("function_handle",) or "MATLAB_object_decode" in node.attrs:
            return OpaqueValue(cls or "object")
        try:
            from mat73.core import HDF5Decoder

            decoder = HDF5Decoder(verbose=False)
            if "#refs#" in self.handle:
                decoder.refs = self.handle["#refs#"]
            return decoder.unpack_mat(node, force=True, MATLAB_class=cls)
        except Exception:  # noqa: BLE001 - an undecodable value is reported as opaque
            return OpaqueValue(cls or "unknown")


_MATLAB_DTYPES = {
    "single": "float32", "double": "float64", "int8": "int8", "int16": "int16", "int32": "int32",
    "int64": "int64", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}


def _attr_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    if isinstance(value, np.ndarray):
        return _attr_str(value.ravel()[0]) if value.size else None
    return str(value)


def _field_names(group) -> list[str]:
    # MATLAB records the field order in MATLAB_fields (vlen arrays of single chars);
    # h5py itself iterates alphabetically.
    fields = group.attrs.get("MATLAB_fields")
    if fields is None:
        return list(group.keys())
    names = []
    for entry in fields:
        chars = np.asarray(entry).ravel()
        names.append(b"".join(c if isinstance(c, bytes) else bytes(c) for c in chars).decode("ascii"))
    return [name for name in names if name in group] + [k for k in group.keys() if k not in names]
