"""`cqd-port inspect` on a few hundred corrupted copies of the parity `.mat` files.

Truncations, flipped bytes, zeroed blocks, absurd declared sizes (a v5
element longer than the file, a compressed matrix declaring 2^30 x 2^30
doubles, a v7.3 dataset declaring hundreds of GiB), HDF5 reference cycles
and dangling references. Every file must end in exit 0 or exactly one
`error:` line with exit 2: no traceback, no MemoryError, no hang. The files
are inspected in one subprocess under an address-space limit
(`resource.setrlimit`), so an allocation of a declared size would fail there
instead of passing unnoticed on a large machine.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np

# v5 files (small enough to mutate many times) and how many mutations of each kind
V5_FILES = ("net_vggm_tiny.mat", "net_vggm_tiny_dag.mat", "net_vggm_tiny_oldformat.mat", "net_vggvd16_tiny.mat",
            "ops_misc.mat", "ops_pool_ties.mat")
MEMORY_HEADROOM = 3 << 30  # bytes of address space the worker may add to what it has after imports


def _truncations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    cuts = [0, 1, 127, 128, 136, 600] + [int(c) for c in rng.integers(137, len(data) - 1, count)]
    return [data[:c] for c in cuts]


def _flips(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        buf = bytearray(data)
        n = (1, 8, 64)[i % 3]
        # half of the flips land in the first 4 KiB: headers and tags
        hi = 4096 if i % 2 == 0 else len(buf)
        for pos in rng.integers(0, min(hi, len(buf)), n):
            buf[pos] ^= int(rng.integers(1, 256))
        out.append(bytes(buf))
    return out


def _zeroed(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        buf = bytearray(data)
        start = int(rng.integers(0, len(buf)))
        length = int(rng.choice([16, 512, 4096, 65536]))
        buf[start : start + length] = bytes(min(length, len(buf) - start))
        out.append(bytes(buf))
    return out


def _v5_absurd(data: bytes) -> list[bytes]:
    """The first element declaring 2 GiB; its compressed matrix declaring 2^30 x 2^30 doubles; a huge cell."""
    out = []
    big = bytearray(data)
    big[132:136] = struct.pack("<I", 0x7FFFFFF0)
    out.append(bytes(big))
    dtype, nbytes = struct.unpack("<II", data[128:136])
    if dtype == 15:  # miCOMPRESSED
        inner = bytearray(zlib.decompress(data[136 : 136 + nbytes]))
        # miMATRIX tag (8) + array flags subelement (16) + dims tag (8), then the dims
        for dims in ((1 << 30, 1 << 30), (0x7FFFFFFF, 3)):
            mutated = bytearray(inner)
            mutated[32:40] = struct.pack("<ii", *dims)
            packed = zlib.compress(bytes(mutated))
            element = struct.pack("<II", 15, len(packed)) + packed
            out.append(data[:128] + element + data[136 + nbytes :])
        mutated = bytearray(inner)
        mutated[4:8] = struct.pack("<I", 0x7FFFFFF0)  # the matrix element itself declares 2 GiB
        packed = zlib.compress(bytes(mutated))
        out.append(data[:128] + struct.pack("<II", 15, len(packed)) + packed + data[136 + nbytes :])
    return out


def _v73_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2026 HDF5 schema 1.00 ."
    return (text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM").ljust(512, b"\x00")


def _v73_specials(folder: Path) -> list[Path]:
    """Hand-made v7.3 files: a reference cycle, a dangling reference, absurd declared sizes."""
    paths = []

    def make(name: str, build) -> None:
        path = folder / name
        with h5py.File(path, "w", userblock_size=512, libver="earliest") as handle:
            build(handle)
        with open(path, "r+b") as handle:
            handle.write(_v73_header())
        paths.append(path)

    def cycle(handle) -> None:
        refs = handle.create_group("#refs#")
        a = refs.create_dataset("a", shape=(1, 1), dtype=h5py.ref_dtype)
        a.attrs["MATLAB_class"] = np.bytes_("cell")
        b = refs.create_dataset("b", shape=(1, 1), dtype=h5py.ref_dtype)
        b.attrs["MATLAB_class"] = np.bytes_("cell")
        a[0, 0], b[0, 0] = b.ref, a.ref
        layers = handle.create_dataset("layers", shape=(1, 1), dtype=h5py.ref_dtype)
        layers.attrs["MATLAB_class"] = np.bytes_("cell")
        layers[0, 0] = a.ref

    def self_cycle(handle) -> None:
        net = handle.create_group("net")
        net.attrs["MATLAB_class"] = np.bytes_("struct")
        layers = net.create_dataset("layers", shape=(1, 2), dtype=h5py.ref_dtype)
        layers.attrs["MATLAB_class"] = np.bytes_("cell")
        layers[0, 0] = layers.ref
        layers[0, 1] = net.ref

    def dangling(handle) -> None:
        refs = handle.create_group("#refs#")
        gone = refs.create_dataset("gone", data=np.zeros((2, 2)))
        layers = handle.create_dataset("layers", shape=(1, 1), dtype=h5py.ref_dtype)
        layers.attrs["MATLAB_class"] = np.bytes_("cell")
        layers[0, 0] = gone.ref
        del refs["gone"]

    def huge(handle) -> None:  # 400 GiB declared, nothing stored (chunked, never written)
        data = handle.create_dataset("layers", shape=(240000, 240000), dtype="f8", chunks=(1000, 1000), compression="gzip")
        data.attrs["MATLAB_class"] = np.bytes_("double")

    def huge_empty(handle) -> None:  # an "empty" array whose dims are absurd
        data = handle.create_dataset("layers", data=np.array([1 << 40, 1 << 40], dtype=np.uint64))
        data.attrs["MATLAB_class"] = np.bytes_("double")
        data.attrs["MATLAB_empty"] = np.uint8(1)

    def huge_char(handle) -> None:
        data = handle.create_dataset("name", shape=(1 << 20, 1 << 20), dtype="u2", chunks=(1024, 1024))
        data.attrs["MATLAB_class"] = np.bytes_("char")

    for name, build in (("cycle.mat", cycle), ("self_cycle.mat", self_cycle), ("dangling.mat", dangling),
                        ("huge.mat", huge), ("huge_empty.mat", huge_empty), ("huge_char.mat", huge_char)):
        make(name, build)
    return paths


def _corrupted_copies(parity_dir: Path, folder: Path) -> list[Path]:
    from test_weights_matfile import _v7_variables, write_v73

    rng = np.random.default_rng(2026)
    paths: list[Path] = []

    def save(name: str, blobs: list[bytes]) -> None:
        for i, blob in enumerate(blobs):
            path = folder / f"{name}.{i:03d}.mat"
            path.write_bytes(blob)
            paths.append(path)

    for name in V5_FILES:
        data = (parity_dir / name).read_bytes()
        stem = name[:-4]
        save(f"{stem}.trunc", _truncations(data, rng, 8))
        save(f"{stem}.flip", _flips(data, rng, 18))
        save(f"{stem}.zero", _zeroed(data, rng, 8))
        save(f"{stem}.absurd", _v5_absurd(data))
    v73 = folder / "v73.mat"
    write_v73(v73, _v7_variables(parity_dir / "net_vggm_tiny.mat"))
    data = v73.read_bytes()
    v73.unlink()
    save("v73.trunc", _truncations(data, rng, 10))
    save("v73.flip", _flips(data, rng, 14))
    save("v73.zero", _zeroed(data, rng, 8))
    paths.extend(_v73_specials(folder))
    return paths


def _worker(listing: str) -> None:
    """Inspect every file listed, under an address-space limit; one JSON line per file."""
    import signal

    sys.path.insert(0, str(Path(__file__).parent))
    from model_fuzz_worker import prepare

    run_cli = prepare(MEMORY_HEADROOM)

    def timeout(*_: object) -> None:
        raise TimeoutError("inspect took over 20 s")

    signal.signal(signal.SIGALRM, timeout)
    for path in Path(listing).read_text().splitlines():
        signal.alarm(20)
        try:
            result = run_cli("inspect", path)
            record = {"path": path, "code": result.exit_code, "stderr": result.stderr, "stdout_tail": result.stdout[-300:]}
        except BaseException as exc:  # noqa: BLE001 - report what escaped the CLI
            record = {"path": path, "code": -1, "stderr": f"escaped: {type(exc).__name__}: {exc}"}
        signal.alarm(0)
        print(json.dumps(record), flush=True)


def test_inspect_on_corrupted_mat_files_never_crashes(tmp_path: Path, parity_dir: Path) -> None:
    paths = _corrupted_copies(parity_dir, tmp_path)
    assert len(paths) >= 300
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(map(str, paths)))
    proc = subprocess.run(
        [sys.executable, __file__, str(listing)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(records) == len(paths)
    bad = []
    for record in records:
        lines = record["stderr"].strip().splitlines()
        clean_error = record["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        if not (record["code"] == 0 or clean_error) or "Traceback" in record["stderr"] or "MemoryError" in record["stderr"]:
            bad.append((Path(record["path"]).name, record["code"], record["stderr"][-300:]))
    assert not bad, bad[:5]
    errors = [r for r in records if r["code"] == 2]
    # the corruptions are real: most files are refused, each naming the file
    assert len(errors) > len(records) // 2
    assert all(Path(r["path"]).name in r["stderr"] for r in errors)
    named = {Path(r["path"]).name: r["stderr"] for r in errors}
    assert "reference cycle" in named["cycle.mat"] and "reference cycle" in named["self_cycle.mat"]
    assert "declares" in named["huge.mat"] and "declares" in named["huge_char.mat"]
    # absurd sizes are caught from the file's own numbers, before any allocation can fail
    assert not any("fits in memory" in r["stderr"] for r in records)
    absurd = [stderr for name, stderr in named.items() if ".absurd." in name]
    assert len(absurd) == 4 * len(V5_FILES) and all("declares" in stderr for stderr in absurd)


if __name__ == "__main__":
    _worker(sys.argv[1])
