"""The one precision policy every "auto" setting follows (`run.amp`, `model.llm.dtype`, extraction's
`precision`): half precision on CUDA, bf16 where the GPU supports it, else fp16; fp32 on CPU,
where bf16 matmuls are slower than fp32 on most machines (measured on the demo's CPU)."""
from __future__ import annotations

from typing import Optional

import torch


def auto_half_dtype(device_type: str) -> Optional[torch.dtype]:
    """What "auto" means on `device_type` ("cuda", "cpu", ...): a half dtype, or None for plain fp32."""
    if device_type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
