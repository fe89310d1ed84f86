"""Reading a lens's saved tensors (params.pt) with every shape checked before memory is spent.

``torch.load`` inflates and allocates whatever the file declares: a 2 MB deflated
params.pt grew to 2.17 GB before ``load_state_dict`` reported a shape error, and NaN
weights loaded silently. So the zip's own headers are read first (torch.save never
compresses, and a lens of known shapes has a known size), the tensors are then mapped
from the file rather than copied (``mmap=True``, ``weights_only=True``), and each is
checked for its name, shape, dtype and finiteness before the caller copies it anywhere.
The tuned lens reads its translators this way; any lens with saved tensors can.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

# Room for the pickle that names the tensors and torch.save's 64-byte record alignment.
HEADER_BYTES = 64 * 2**10
PER_TENSOR_BYTES = 4 * 2**10
WIDEST_DTYPE_BYTES = 8  # fp64: the widest floating dtype a lens may be saved in


def load_checked(path: Path, expected: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, exactly the names and shapes in ``expected``, all finite floats.

    Raises ValueError with one line naming the file or the tensor that is wrong and why;
    nothing the file declares is allocated before its size has been checked.
    """
    name = path.name
    limit = HEADER_BYTES + sum(PER_TENSOR_BYTES + WIDEST_DTYPE_BYTES * math.prod(shape) for shape in expected.values())
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"{name} is {size:,} bytes; tensors of this lens's shapes take at most {limit:,}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{name} is not in torch's zip format (torch.save since torch 1.6)")
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if entry.compress_type != zipfile.ZIP_STORED or entry.file_size > limit:
                raise ValueError(f"{name} holds a compressed or oversized record ({entry.filename[-60:]})")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{name} is not a mapping of tensor names to tensors")
    unexpected = sorted(map(str, set(state) - set(expected)))
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        which = f"has a tensor '{unexpected[0][:60]}' this lens does not" if unexpected else f"lacks '{missing[0]}'"
        raise ValueError(f"{name} {which} ({len(state)} tensors; this lens has {len(expected)})")
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{name}'s tensor '{key}' has shape {list(tensor.shape)}; this lens needs {list(shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name}'s tensor '{key}' holds {tensor.dtype}, not floating-point numbers")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}'s tensor '{key}' holds NaN or infinite values")
    return state
