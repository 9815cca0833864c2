"""What a checkpoint's tensors must be before anything touches their data.

``torch.load(weights_only=True)`` keeps pickled code out, but a tensor's declared shape is still the
file's word: a stride-0 view of one float can declare a terabyte, and copying or summing it would
allocate or burn that much. Everything here reads only metadata (shape, strides, storage size), except
the finiteness check, which runs once the sizes are known to be honest.
"""

from __future__ import annotations

import torch

from nsr_deploy.core.budgets import check_tensor_elements
from nsr_deploy.core.errors import NSRError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _storage_holds(t: torch.Tensor) -> bool:
    """True when the storage really holds every element the shape declares, without overlap."""
    size = t.element_size()
    nbytes = t.untyped_storage().nbytes()
    extent = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    return extent * size <= nbytes and t.numel() * size <= nbytes


def check_tensor(key: str, t: torch.Tensor, where: str) -> None:
    if t.layout != torch.strided or t.is_sparse or getattr(t, "is_quantized", False):
        raise NSRError(f"{where}: {key} is a {t.layout} tensor; a checkpoint holds dense float weights")
    if t.dtype not in FLOAT_DTYPES:
        raise NSRError(f"{where}: {key} holds {str(t.dtype).replace('torch.', '')} values, not floating point")
    if t.numel() == 0:
        raise NSRError(f"{where}: {key} is empty (shape {list(t.shape)})")
    if not _storage_holds(t):
        raise NSRError(f"{where}: {key} declares shape {list(t.shape)} (strides {list(t.stride())}) over a "
                       f"storage of {t.untyped_storage().nbytes():,} bytes: not a real weight tensor")


def checked_tensors(state: dict, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, each checked, all within the element budget (no data read yet)."""
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise NSRError(f"{where}: state dict keys must be names, found {type(bad_keys[0]).__name__} "
                       f"key {bad_keys[0]!r:.40}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key, t in tensors.items():
        check_tensor(key, t, where)
    check_tensor_elements(sum(t.numel() for t in tensors.values()), where)
    return tensors


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """NaN or Inf weights give black or garbage images with exit 0: refuse them, naming the layer."""
    for key, t in state.items():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NSRError(f"{where}: {key} holds {bad} non-finite value(s) (NaN or Inf): refusing the model")
