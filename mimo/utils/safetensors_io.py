"""Reading safetensors files without two copies of anything: their headers, tensors as views of a memory
map (zero-copy), and tensors read straight into memory the caller owns (no mapping touched).

safetensors' own ``safe_open`` maps a whole file as one storage and hands out views, so a tensor that is
then copied (stacked experts, a dtype conversion) stays resident twice: the copy, and the file pages the
copy touched, mapped for as long as any other tensor of the file lives. Here the caller chooses per
tensor: :meth:`SafetensorsFile.view` for tensors used as stored (pages come in as they are touched and
stay reclaimable page cache), :meth:`SafetensorsFile.read_into` for tensors copied anyway (``readinto``
through the page cache, nothing mapped into the process).

The format: 8 bytes of header length (little endian), a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}}`` (offsets relative to the end of the header), then the data; the header
is padded so that data starts 8-byte aligned.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: str
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: str) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: a safetensors header of {n} bytes is not believable")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {meta.get('dtype')!r}, which mimo does not read")
        begin, end = meta["data_offsets"]
        out[name] = TensorInfo(name, DTYPES[meta["dtype"]], tuple(meta["shape"]), path, base + begin, end - begin)
    return out


class SafetensorsFile:
    """One open safetensors file. ``mmap=False`` never maps it: :meth:`view` then reads a private copy."""

    def __init__(self, path: str, mmap_ok: bool = True) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115  (closed in close(); views keep the map alive on their own)
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_COPY) if mmap_ok else None

    def view(self, info: TensorInfo) -> torch.Tensor:
        """The tensor as stored: a view of the file's memory map (copy-on-write; it keeps the map alive)."""
        if self.map is None:
            return self.read_into(info, torch.empty(info.shape, dtype=info.dtype, device="cpu"))
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype, device="cpu")
        return torch.frombuffer(self.map, dtype=info.dtype, count=info.numel, offset=info.start).view(info.shape)

    def read_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        """Read the tensor's bytes into ``out`` (contiguous, same dtype and shape; CPU memory the caller owns)."""
        if out.dtype != info.dtype or tuple(out.shape) != info.shape or not out.is_contiguous():
            raise ValueError(f"{info.name}: cannot read {info.dtype} {list(info.shape)} into {out.dtype} "
                             f"{list(out.shape)}")
        if info.nbytes:
            buf = memoryview(out.view(-1).view(torch.uint8).numpy())
            self.file.seek(info.start)
            got = self.file.readinto(buf)
            if got != info.nbytes:
                raise ValueError(f"{self.path} ends inside tensor {info.name} ({got} of {info.nbytes} bytes)")
        return out

    def read(self, info: TensorInfo) -> torch.Tensor:
        return self.read_into(info, torch.empty(info.shape, dtype=info.dtype, device="cpu"))

    def read_rows(self, info: TensorInfo, begin: int, end: int) -> torch.Tensor:
        """Rows ``begin:end`` of a tensor (its first dimension): one read of just those bytes."""
        row = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
        out = torch.empty((end - begin, *info.shape[1:]), dtype=info.dtype, device="cpu")
        if end > begin:
            self.file.seek(info.start + begin * row)
            self.file.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        return out

    def close(self) -> None:
        self.file.close()  # a map still referenced by views lives on until they go


def headers(files: dict[str, str]) -> dict[str, TensorInfo]:
    """TensorInfo for every tensor of a directory's files (``{tensor name: file}`` from :func:`weight_files`)."""
    out: dict[str, TensorInfo] = {}
    for path in sorted(set(files.values())):
        for name, info in read_header(path).items():
            if files.get(name) == path:
                out[name] = info
    return out


def file_bytes(files: dict[str, str]) -> int:
    return sum(os.path.getsize(p) for p in set(files.values()))
