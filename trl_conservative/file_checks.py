"""Is a file what it claims to be, judged from its bytes alone, before anything loads it.

- `utf8_problem`: where bytes stop being UTF-8 (offset, line and column of the first bad byte);
- `safetensors_problem`, `check_safetensors_in`: a `.safetensors` file that is truncated or has a corrupt header
  (checked from its header and size alone, before any weights load);
- `torch_archive_problem`: a `torch.save` file (optimizer, scheduler, RNG state) that is empty, cut off or fails a
  checksum, judged without unpickling it.

The data files (`run/files.py`), checkpoints (`reliability/checkpoints.py`), the report's inputs and the embedded
demo model all ask these; nothing here imports more of the package than `errors`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from trl_conservative.errors import ConfigError

__all__ = [
    "CHECKSUM_LIMIT_BYTES",
    "check_safetensors_in",
    "safetensors_problem",
    "torch_archive_problem",
    "utf8_problem",
]


def utf8_problem(data: bytes, start: int = 0) -> str | None:
    """Where `data` stops being UTF-8 ("byte 0xff at offset 12 (line 2, column 3)"), else None."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"byte 0x{data[offset]:02x} at offset {start + offset} (line {line}, column {column})"
    return None


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a `.safetensors` file cannot be loaded (truncated, corrupt header), judged from its header; else None.

    The format: 8 bytes little-endian header length N, N bytes of JSON header (each tensor's `data_offsets`
    into the data that follows), then the data.
    """
    p = Path(path)
    size = p.stat().st_size
    if size < 8:
        return f"is truncated ({size} bytes, shorter than the 8-byte header length)"
    with open(p, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            return (
                f"is truncated or corrupt: its header claims {header_len} bytes, the file holds {size} in all"
            )
        header_bytes = fh.read(header_len)
    try:
        header = json.loads(header_bytes)
    except ValueError:
        return "has a corrupt header (not JSON)"
    if not isinstance(header, dict):
        return "has a corrupt header (not a JSON object)"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"has a corrupt header (tensor {key!r} has no valid data_offsets)"
        end = max(end, offsets[1])
    data = size - 8 - header_len
    if end > data:
        return f"is truncated: its tensors need {end} bytes of data, the file holds {data}"
    return None


# Archives up to this size have every member's CRC-32 checked (a read of the whole file); larger ones (a full model's
# optimizer state) only their zip structure, which catches a cut-off file without reading it.
CHECKSUM_LIMIT_BYTES = 1 << 30


def torch_archive_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a `torch.save` file (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `pytorch_model.bin`) cannot be
    loaded (empty, truncated, corrupt), judged without unpickling it; else None.

    `torch.save` writes a zip archive with a CRC-32 per member: a cut-off file has no central directory, flipped
    bytes fail a checksum. A file in torch's pre-1.6 format (a bare pickle) is not judged.
    """
    import zipfile
    import zlib

    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return "is empty"
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if not magic.startswith(b"PK"):
        return None if magic.startswith(b"\x80") else "is not a torch.save file (no zip or pickle header)"
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
                return "is corrupt (its archive holds no data.pkl)"
            if size <= CHECKSUM_LIMIT_BYTES:
                bad = archive.testzip()
                if bad is not None:
                    return f"is corrupt (its member {bad} fails its checksum)"
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        detail = " ".join(str(exc).split())[:120]
        return f"is truncated or corrupt ({detail})"
    return None


def check_safetensors_in(folder: str | os.PathLike[str], what: str) -> None:
    """Every `*.safetensors` file directly in `folder` must be complete; `ConfigError` names the first bad one."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        if not path.is_file():
            raise ConfigError(f"{what} {str(path)!r} is a folder, not a weights file. Remove or replace it.")
        problem = safetensors_problem(path)
        if problem is not None:
            raise ConfigError(
                f"Weights file {str(path)!r} {problem}. It was cut off while being written or copied: copy or save "
                f"it again, or point to another {what.lower()}."
            )
