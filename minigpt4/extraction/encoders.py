"""The offline encoders of HERO's extraction step, one small class each.

Each encoder wraps a Hugging Face model loaded once with `from_pretrained(path_or_id)` (a hub
id or a local folder) and turns preprocessed inputs into a float32 numpy array:

  CLIPFrameEncoder     frames  [N, 3, h, w]      -> clip     [N, D]    (D = 1024 for ViT-L/14; + the
                                                    projected embeddings scene.py scores)
  VideoMAEClipEncoder  clips   [C, L, 3, h, w]   -> videomae [C, D]    (D = 768 for base)
  HuBERTEncoder        wave    [S] (16 kHz)      -> hubert   [T_a, D]  (D = 1024 for large, 50 Hz)
  WhisperTranscriber   log-mel [B, M, 3000]      -> transcripts (list of str)
  BertTextEncoder      text                      -> bert     [T_t, D]  (D = 768 for base)

The preprocessing half of each (HF image processor / feature extractor) lives in small
picklable `*Preprocessor` classes, so decoding workers can prepare model inputs while the
main process only runs the networks. Why split them: on a GPU the encoders are fast and the
CPU work (decode, resize, normalise, log-mel) is what has to be spread over processes.

Choices (state them in meta, keep them stable):
- CLIP: `output="pooled"` (default) is the vision tower's pooled output (post-layernorm CLS,
  1024-d for ViT-L/14), the `clip [N, 1024]` that configs/models/hero_paper.yaml expects;
  `output="image_embeds"` is the projected joint-space embedding (768-d for ViT-L/14).
- VideoMAE: the mean over all tokens of the last hidden state, one vector per clip.
- HuBERT: the mean of the last `num_layers` (3) entries of `hidden_states`.
- BERT: the last hidden state of every token, [CLS] and [SEP] included; texts longer than
  `max_length` are split into consecutive windows and their token states concatenated.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- helpers


def resolve_device(device: str) -> "Any":
    """torch.device for `device` ("cpu", "cuda", "cuda:1", "auto"); a clear error when CUDA is missing."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


def autocast_dtype(device: "Any", precision: str) -> Optional["Any"]:
    """The autocast dtype for `precision` on `device` (None = plain fp32). auto: bf16 on CUDA, fp32 on CPU."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        from minigpt4.common.precision import auto_half_dtype

        return auto_half_dtype(device.type)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class _Runner:
    """Device, autocast and batch size shared by the encoders."""

    def __init__(self, device: str = "cpu", precision: str = "auto", batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.batch_size = batch_size

    def _ctx(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _load(self, cls, path: str, **kwargs):
        import torch

        try:
            model = cls.from_pretrained(path, dtype=torch.float32, **kwargs)
        except OSError as exc:
            raise OSError(f"cannot load {cls.__name__} from {path!r}: {exc}") from exc
        return model.to(self.device).eval()

    def _tensor(self, array: "np.ndarray | Any"):
        """numpy array or torch tensor (decoding workers hand over tensors in shared memory) -> device tensor."""
        import torch

        if not isinstance(array, torch.Tensor):
            array = torch.from_numpy(np.ascontiguousarray(array))
        return array.to(self.device, non_blocking=True)


def _short_side_of(processor: Any) -> int:
    """The short side (pixels) an image processor needs, so frames are decoded no larger than that."""
    sizes = []
    for attr in ("size", "crop_size"):
        s = getattr(processor, attr, None)
        if s is None:
            continue
        get = (lambda k: s.get(k)) if isinstance(s, dict) else (lambda k: getattr(s, k, None))
        if get("shortest_edge"):
            sizes.append(int(get("shortest_edge")))
        elif get("height") and get("width"):
            sizes.append(max(int(get("height")), int(get("width"))))
    return max(sizes) if sizes else 224


# ----------------------------------------------------------------------------- preprocessors (picklable)


class ImagePreprocessor:
    """RGB uint8 frames `[N, H, W, 3]` -> float32 `[N, 3, h, w]` with the model's own image processor."""

    def __init__(self, path: str) -> None:
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(path)
        self.short_side = _short_side_of(self.processor)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) == 0:
            return np.zeros((0, 3, self.short_side, self.short_side), np.float32)
        out = self.processor(images=list(frames), return_tensors="np")["pixel_values"]
        return np.asarray(out, dtype=np.float32)


class ClipPreprocessor:
    """Clips uint8 `[C, L, H, W, 3]` -> float32 `[C, L, 3, h, w]` with the VideoMAE processor."""

    def __init__(self, path: str) -> None:
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(path)
        self.short_side = _short_side_of(self.processor)

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        if len(clips) == 0:
            return np.zeros((0, 0, 3, self.short_side, self.short_side), np.float32)
        out = self.processor([list(c) for c in clips], return_tensors="np")["pixel_values"]
        return np.asarray(out, dtype=np.float32)


class WaveformPreprocessor:
    """16 kHz float32 `[S]` -> model input `[S']` with the HuBERT feature extractor (normalisation)."""

    MIN_SAMPLES = 400  # one 25 ms frame: HuBERT's conv front end needs at least this much

    def __init__(self, path: str) -> None:
        from transformers import AutoConfig, AutoFeatureExtractor, Wav2Vec2FeatureExtractor

        try:
            self.processor = AutoFeatureExtractor.from_pretrained(path)
        except (OSError, ValueError):
            # Some speech checkpoints ship no preprocessor_config.json. Models with layer-norm
            # feature extractors were trained on zero-mean unit-variance input; the others on raw.
            norm = getattr(AutoConfig.from_pretrained(path), "feat_extract_norm", "group")
            self.processor = Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=norm == "layer"
            )
        self.sample_rate = int(getattr(self.processor, "sampling_rate", 16000))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if wave.size < self.MIN_SAMPLES:
            wave = np.pad(wave, (0, self.MIN_SAMPLES - wave.size))
        out = self.processor(wave, sampling_rate=self.sample_rate, return_tensors="np")["input_values"][0]
        return np.asarray(out, dtype=np.float32)


class LogMelPreprocessor:
    """16 kHz float32 `[S]` (<= 30 s) -> Whisper log-mel `[M, 3000]`."""

    def __init__(self, path: str) -> None:
        from transformers import AutoFeatureExtractor

        self.processor = AutoFeatureExtractor.from_pretrained(path)
        self.sample_rate = int(getattr(self.processor, "sampling_rate", 16000))
        self.window_seconds = float(getattr(self.processor, "chunk_length", 30))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        out = self.processor(wave, sampling_rate=self.sample_rate, return_tensors="np")["input_features"][0]
        return np.asarray(out, dtype=np.float32)


def is_silent(wave: np.ndarray, threshold_dbfs: float = -45.0, frame_seconds: float = 0.03, sample_rate: int = 16000) -> bool:
    """True when no 30 ms frame of `wave` is louder than `threshold_dbfs` (RMS, full scale = 1.0).

    Whisper hallucinates text on silence; this energy gate keeps silent audio out of it.
    """
    n = max(1, int(frame_seconds * sample_rate))
    if wave.size == 0:
        return True
    usable = wave[: (wave.size // n) * n] if wave.size >= n else np.pad(wave, (0, n - wave.size))
    rms = np.sqrt(np.mean(usable.reshape(-1, n).astype(np.float64) ** 2, axis=1))
    return bool(20 * np.log10(rms.max() + 1e-12) < threshold_dbfs)


# ----------------------------------------------------------------------------- encoders


class CLIPFrameEncoder(_Runner):
    """CLIP vision tower: one embedding per sampled frame.

    `with_projection`: `encode` also returns each frame's projected joint-space embedding (the
    `image_embeds` the scene labels compare with text, scene.py) after the chosen output's D
    columns; `with_text` loads the whole CLIPModel, so the text tower is there for those labels.
    """

    key = "clip"
    OUTPUTS = ("pooled", "image_embeds")

    def __init__(self, path: str, device: str = "cpu", precision: str = "auto", batch_size: int = 32,
                 output: str = "pooled", with_text: bool = False, with_projection: bool = False) -> None:
        super().__init__(device, precision, batch_size)
        if output not in self.OUTPUTS:
            raise ValueError(f"clip output must be one of {self.OUTPUTS}, got {output!r}")
        from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

        self.path, self.output, self.with_projection = path, output, with_projection or with_text
        if with_text:
            cls = CLIPModel
        else:
            cls = CLIPVisionModel if output == "pooled" and not self.with_projection else CLIPVisionModelWithProjection
        self.model = self._load(cls, path)
        self.vision = self.model if isinstance(self.model, CLIPVisionModel) else self.model.vision_model
        self.projection = getattr(self.model, "visual_projection", None)
        cfg = self.vision.config
        self.projection_dim = None if self.projection is None else int(self.projection.out_features)
        self.dim = int(cfg.hidden_size) if output == "pooled" else int(self.projection_dim)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 `[N, 3, h, w]` -> `[N, D]` (`[N, D + P]` with_projection)."""
        import torch

        outs = []
        with torch.inference_mode(), self._ctx():
            for lo in range(0, len(pixel_values), self.batch_size):
                pooled = self.vision(pixel_values=self._tensor(pixel_values[lo : lo + self.batch_size])).pooler_output
                proj = self.projection(pooled) if self.projection is not None else None
                emb = pooled if self.output == "pooled" else proj
                if self.with_projection:
                    emb = torch.cat([emb, proj], dim=1)
                outs.append(emb.float().cpu().numpy())
        width = self.dim + (self.projection_dim if self.with_projection else 0)
        return np.concatenate(outs) if outs else np.zeros((0, width), np.float32)


class VideoMAEClipEncoder(_Runner):
    """VideoMAE: one embedding per clip of `clip_len` frames (the mean of its last-layer tokens)."""

    key = "videomae"

    def __init__(self, path: str, device: str = "cpu", precision: str = "auto", batch_size: int = 4) -> None:
        super().__init__(device, precision, batch_size)
        from transformers import VideoMAEModel

        self.path = path
        self.model = self._load(VideoMAEModel, path)
        self.clip_len = int(self.model.config.num_frames)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 `[C, L, 3, h, w]` (L = clip_len) -> `[C, D]`."""
        import torch

        if len(pixel_values) and pixel_values.shape[1] != self.clip_len:
            raise ValueError(f"VideoMAE {self.path} takes {self.clip_len}-frame clips, got {pixel_values.shape[1]}")
        outs = []
        with torch.inference_mode(), self._ctx():
            for lo in range(0, len(pixel_values), self.batch_size):
                h = self.model(pixel_values=self._tensor(pixel_values[lo : lo + self.batch_size])).last_hidden_state
                outs.append(h.float().mean(dim=1).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.model.config.hidden_size), np.float32)


class HuBERTEncoder(_Runner):
    """HuBERT: frame-level speech states (50 Hz), the mean of the last `num_layers` hidden layers.
    The extraction script then pools them to `audio.fps` window means (`window_means`)."""

    key = "hubert"

    def __init__(self, path: str, device: str = "cpu", precision: str = "auto", num_layers: int = 3) -> None:
        super().__init__(device, precision, 1)
        from transformers import HubertModel

        self.path = path
        self.model = self._load(HubertModel, path)
        n_hidden = self.model.config.num_hidden_layers + 1  # embeddings + each layer
        if not 1 <= num_layers <= n_hidden:
            raise ValueError(f"hubert num_layers must be in 1..{n_hidden} for {path}, got {num_layers}")
        self.num_layers = num_layers

    @property
    def sample_rate(self) -> int:
        """Input samples per second (the decoders resample audio to this rate)."""
        from minigpt4.extraction.video_io import AUDIO_SAMPLE_RATE

        return AUDIO_SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        """Output frames per second: the input rate over the feature encoder's total stride
        (16 kHz / 320 samples = 50 Hz for HuBERT base/large)."""
        import math

        return self.sample_rate / math.prod(int(s) for s in self.model.config.conv_stride)

    def encode(self, input_values: np.ndarray) -> np.ndarray:
        """input_values float32 `[S]` (one segment, already normalised) -> `[T_a, D]`."""
        import torch

        with torch.inference_mode(), self._ctx():
            out = self.model(input_values=self._tensor(input_values[None, :]), output_hidden_states=True)
            states = torch.stack(out.hidden_states[-self.num_layers :]).float().mean(dim=0)
        return states[0].cpu().numpy()


class WhisperTranscriber(_Runner):
    """Whisper speech recognition: log-mel windows -> text (one string per window)."""

    key = "transcript"

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        precision: str = "auto",
        batch_size: int = 8,
        language: Optional[str] = "en",
        task: str = "transcribe",
        max_new_tokens: int = 440,
        num_beams: int = 1,
    ) -> None:
        super().__init__(device, precision, batch_size)
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.path, self.language, self.task, self.num_beams = path, language, task, num_beams
        self.processor = WhisperProcessor.from_pretrained(path)
        self.model = self._load(WhisperForConditionalGeneration, path)
        # The decoder has max_target_positions slots; the prompt (sot, language, task, notimestamps) takes 4.
        room = int(self.model.config.max_target_positions) - 4
        self.max_new_tokens = max(1, min(int(max_new_tokens), room))

    def transcribe(self, features: "np.ndarray | Any | Sequence[np.ndarray]") -> list[str]:
        """features: log-mel windows `[B, M, 3000]` (array, tensor or list of `[M, 3000]`) -> B stripped texts."""
        import torch

        if isinstance(features, (list, tuple)):
            features = np.stack(features) if features else np.zeros((0, 0, 0), np.float32)
        texts: list[str] = []
        for lo in range(0, len(features), self.batch_size):
            batch = self._tensor(features[lo : lo + self.batch_size]).float()
            kwargs: dict[str, Any] = dict(task=self.task, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
            if self.language:
                kwargs["language"] = self.language
            with torch.inference_mode(), self._ctx():
                ids = self.model.generate(input_features=batch, **kwargs)
            texts.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return texts


class BertTextEncoder(_Runner):
    """BERT: last-layer states of every token of a transcript."""

    key = "bert"

    def __init__(self, path: str, device: str = "cpu", precision: str = "auto", batch_size: int = 8, max_length: int = 512) -> None:
        super().__init__(device, precision, batch_size)
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = self._load(AutoModel, path)
        limit = int(getattr(self.model.config, "max_position_embeddings", max_length))
        self.max_length = min(int(max_length), limit)

    def encode(self, text: str) -> Optional[np.ndarray]:
        """text -> float32 `[T_t, D]` over all windows' real tokens; None for an empty text."""
        import torch

        if not text.strip():
            return None
        enc = self.tokenizer(
            text, truncation=True, max_length=self.max_length, return_overflowing_tokens=True,
            padding=True, return_tensors="pt",
        )
        enc.pop("overflow_to_sample_mapping", None)
        enc.pop("num_truncated_tokens", None)
        enc.pop("overflowing_tokens", None)
        mask = enc["attention_mask"].bool()
        outs = []
        with torch.inference_mode(), self._ctx():
            for lo in range(0, mask.shape[0], self.batch_size):
                part = {k: v[lo : lo + self.batch_size].to(self.device) for k, v in enc.items()}
                h = self.model(**part).last_hidden_state.float().cpu()
                outs.extend(h[i][mask[lo + i]] for i in range(h.shape[0]))
        return torch.cat(outs).numpy()
