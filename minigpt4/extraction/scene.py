"""Zero-shot scene labels from the CLIP checkpoint's own text tower: `scene [1, K]`.

Why: a CLIP frame embedding is opaque, but "most likely a person outdoors (0.62)" can be worded
(minigpt4/datasets/measured_evidence.py) for a clip nobody annotated, from the same model that
makes `clip`. The K probabilities (softmax over `visual.scene_prompts`, CLIP's learned logit
scale) compare the prompts' text embeddings with the clip's mean image embedding: each sampled
frame's projected embedding (`image_embeds`) L2-normalised, averaged, normalised again. The
pooled output mode (`clip [N, 1024]`) still runs the projection for this.

Only a full CLIP checkpoint (config `model_type: clip`, with a tokenizer) has a text tower; for
any other visual encoder `scene` is skipped with the reason in `meta_absent`, never an error.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np


def text_tower_problem(path: str) -> Optional[str]:
    """None when `path` is a CLIP checkpoint with a text tower and a tokenizer, else why scene is skipped."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        return f"cannot read the visual encoder's config ({str(exc).splitlines()[0][:120]})"
    kind = getattr(cfg, "model_type", "?")
    if kind != "clip":
        return f"visual encoder {path} is a {kind} model without a text tower (zero-shot labels need a full CLIP)"
    try:
        AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        return f"visual encoder {path} has no tokenizer ({str(exc).splitlines()[0][:120]})"
    return None


def labels_meta(prompts: Sequence[str]) -> str:
    """`meta_scene_labels`: the prompts as a JSON list, in the order of the K columns."""
    return json.dumps(list(prompts), ensure_ascii=False)


class SceneScorer:
    """The prompts' normalised text embeddings, computed once; `probabilities` scores a clip."""

    def __init__(self, clip_model: Any, tokenizer: Any, prompts: Sequence[str], device: Any) -> None:
        import torch

        if not prompts:
            raise ValueError("visual.scene_prompts is empty")
        self.prompts = [str(p) for p in prompts]
        enc = tokenizer(self.prompts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = clip_model.text_model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
            text = clip_model.text_projection(out.pooler_output).float()
            self.scale = float(clip_model.logit_scale.exp().float().item())
        self.text = torch.nn.functional.normalize(text, dim=-1).cpu().numpy()  # [K, P]

    def probabilities(self, image_embeds: np.ndarray) -> np.ndarray:
        """Projected frame embeddings `[N, P]` -> float32 `[1, K]` probabilities (rows sum to 1)."""
        e = np.asarray(image_embeds, np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        mean = e.mean(axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        logits = self.scale * (self.text.astype(np.float64) @ mean)
        p = np.exp(logits - logits.max())
        return (p / p.sum()).astype(np.float32)[None, :]
