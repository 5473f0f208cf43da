#!/usr/bin/env python3
"""Opens an encoder exported by Ssl (run folder's export/encoder.safetensors) in PyTorch and checks
that its tensors carry the documented names and shapes (export/encoder.names.txt).

    /usr/bin/python3 scripts/check_safetensors.py runs/supervised-quick/export

Needs PyTorch (Debian: `apt-get install python3-torch`; run it with /usr/bin/python3 where another
python3 comes first on PATH). The safetensors file is read with the format's own rules (an 8-byte
little-endian header length, a JSON header, raw little-endian data), so no safetensors package is
needed; with `safetensors` installed, `safetensors.torch.load_file(path)` gives the same dict.
"""
import json
import struct
import sys
from pathlib import Path

import torch

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "F16": torch.float16,
          "BF16": torch.bfloat16, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {"Float32": torch.float32, "Float64": torch.float64, "Int64": torch.int64}


def load(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[info["dtype"]])
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def main(folder: str) -> int:
    folder = Path(folder)
    tensors = load(folder / "encoder.safetensors")
    documented = {}
    for line in (folder / "encoder.names.txt").read_text().splitlines():
        name, dtype, shape = line.split(" ", 2)
        documented[name] = (NAMES.get(dtype), [int(d) for d in shape.strip("[]").split(", ") if d])
    problems = []
    if set(tensors) != set(documented):
        problems.append(f"names differ: only in file {sorted(set(tensors) - set(documented))}, "
                        f"only documented {sorted(set(documented) - set(tensors))}")
    for name, tensor in tensors.items():
        if name in documented:
            dtype, shape = documented[name]
            if list(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
                problems.append(f"{name}: documented {dtype} {shape}, found {tensor.dtype} {list(tensor.shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"{name}: non-finite values")
    for p in problems:
        print("problem:", p)
    print(f"PyTorch {torch.__version__} opened {len(tensors)} tensors from {folder / 'encoder.safetensors'}: "
          f"{'names and shapes as documented' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
