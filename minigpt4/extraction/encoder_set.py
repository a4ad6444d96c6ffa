"""The encoding side of extraction, in the main process: every model loaded once, fed in batches.

`EncoderSet.consume` takes each decoded segment, `finalize` turns a finished video's outputs
into the arrays, transcript and `meta_*` strings of its feature file (format: docs/ARCHITECTURE.md,
"Feature files"). The measured signals (`prosody`, `flow`) arrive as rows computed in the
decoding workers; `scene` is scored here from the CLIP frames' projected embeddings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from minigpt4.extraction.batching import BatchQueue, VideoState
from minigpt4.extraction.config import CLIP_FRAME_MODALITIES, EXTRACTOR_VERSION, bert_path
from minigpt4.extraction.rerun import CHECKSUM_META, SETTINGS_META, content_checksum, settings_meta
from minigpt4.extraction.video_io import AUDIO_SAMPLE_RATE

if TYPE_CHECKING:
    from omegaconf import DictConfig


class EncoderSet:
    """The encoders for the requested modalities, loaded once per process, fed through BatchQueues."""

    def __init__(self, cfg: "DictConfig", modalities: Sequence[str], device: str, precision: str, batch_size: int) -> None:
        from minigpt4.extraction import encoders as fx

        self.cfg = cfg
        self.modalities = tuple(modalities)
        self.clip = self.videomae = self.hubert = self.whisper = self.bert = self.scene = None
        self.scene_note = ""  # why `scene` is skipped (no text tower), when it is
        self.queues: dict[str, BatchQueue] = {}
        if any(m in modalities for m in CLIP_FRAME_MODALITIES):
            self._load_clip(cfg, device, precision, batch_size)
            self.queues["clip"] = BatchQueue("clip", self.clip.encode, batch_size)
        if "videomae" in modalities:
            clips_per_batch = max(1, batch_size // 4)  # a clip is 16 frames
            self.videomae = fx.VideoMAEClipEncoder(cfg.motion.path, device, precision, clips_per_batch)
            self.queues["videomae"] = BatchQueue("videomae", self.videomae.encode, clips_per_batch)
        if "hubert" in modalities:
            self.hubert = fx.HuBERTEncoder(cfg.audio.path, device, precision, num_layers=int(cfg.audio.num_layers))
        self.audio_fps = None if cfg.audio.get("fps") is None else float(cfg.audio.fps)
        if "transcript" in modalities or "bert" in modalities:
            w = cfg.text.whisper
            self.whisper = fx.WhisperTranscriber(
                w.path, device, precision, batch_size, language=cfg.text.language, task=w.task,
                max_new_tokens=int(w.max_new_tokens), num_beams=int(w.num_beams),
            )
            self.queues["whisper"] = BatchQueue("whisper", self.whisper.transcribe, batch_size)
        if "bert" in modalities:
            self.bert = fx.BertTextEncoder(bert_path(cfg), device, precision, batch_size, max_length=int(cfg.text.bert.max_length))
        from minigpt4.extraction.decode import signal_settings

        self.prosody, self.flow = signal_settings(cfg, modalities)

    def _load_clip(self, cfg: "DictConfig", device: str, precision: str, batch_size: int) -> None:
        """The CLIP frame encoder; the whole CLIPModel (text tower too) when `scene` is requested and there is one."""
        from minigpt4.extraction import encoders as fx

        path = str(cfg.visual.path)
        with_text = False
        if "scene" in self.modalities:
            from minigpt4.extraction.scene import text_tower_problem

            self.scene_note = text_tower_problem(path) or ""
            with_text = not self.scene_note
        self.clip = fx.CLIPFrameEncoder(path, device, precision, batch_size, output=cfg.visual.output, with_text=with_text)
        if with_text:
            from transformers import AutoTokenizer

            from minigpt4.extraction.scene import SceneScorer

            self.scene = SceneScorer(self.clip.model, AutoTokenizer.from_pretrained(path), list(cfg.visual.scene_prompts),
                                     self.clip.device)

    @property
    def hubert_fps(self) -> float:
        """The stored HuBERT rate: `audio.fps` window means, or HuBERT's own rate when that is
        null or no lower (frames are never upsampled)."""
        rate = self.hubert.frame_rate
        return rate if self.audio_fps is None else min(self.audio_fps, rate)

    def consume(self, st: VideoState, seg: dict) -> None:
        """Queue a segment's inputs (CLIP, VideoMAE, Whisper) and run HuBERT on its audio."""
        if "info" in seg:
            st.info = seg["info"]
        st.has_audio = bool(seg.get("has_audio", False))
        st.audio_samples += int(seg.get("audio_samples", 0))
        if "clip" in self.queues:
            self.queues["clip"].add(st, seg.get("clip"))
        for key in ("prosody", "flow"):  # rows measured in the decoding worker
            if seg.get(key) is not None:
                st.parts.setdefault(key, []).append(np.asarray(seg[key], np.float32))
        if "videomae" in self.queues:
            self.queues["videomae"].add(st, seg.get("videomae"))
        if self.hubert is not None and seg.get("hubert") is not None:
            # Segments differ in length and padding would change HuBERT's output: one forward each.
            # The segment's audio starts where the previous ones' samples end (for pooling).
            start = (st.audio_samples - int(seg.get("audio_samples", 0))) / self.hubert.sample_rate
            st.parts.setdefault("hubert", []).append(self.hubert.encode(seg["hubert"]))
            st.parts.setdefault("hubert_start", []).append(start)
        if "whisper" in self.queues and seg.get("mel") is not None:
            st.windows += 1
            self.queues["whisper"].add(st, seg["mel"][None])
        if seg.get("audio_damage"):
            st.audio_damage = seg["audio_damage"]
            st.audio_packets, st.audio_bad_packets = seg.get("audio_packets", 0), seg.get("audio_bad_packets", 0)
        if seg.get("last"):
            st.complete = True
            if "au_source" in seg:
                st.au, st.au_source, st.au_note = seg.get("au"), seg["au_source"], seg["au_note"]
                st.au_windows = seg.get("au_windows", "")

    def drain(self) -> None:
        """Run every queue, full or not (end of input, or to free waiting videos)."""
        for q in self.queues.values():
            q.run()

    def finalize(self, st: VideoState) -> tuple[dict[str, np.ndarray], Optional[str], dict[str, str]]:
        """BERT on the transcript, then the arrays, transcript and meta of the file."""
        from minigpt4.extraction.audio_stream import audio_verdict

        arrays: dict[str, np.ndarray] = {}
        absent: list[str] = []
        # Damaged audio: kept when most of it decoded, else only the audio modalities are lost.
        lost = None
        if st.audio_damage and not audio_verdict(st.audio_packets, st.audio_bad_packets, st.audio_samples):
            lost = f"audio undecodable ({st.audio_damage})"
            st.parts.pop("hubert", None)
            st.parts.pop("prosody", None)
        no_audio = lost or "no audio track"
        if st.parts.get("clip") and self.clip.with_projection:  # [pooled | projected]: scene takes the latter
            both = np.concatenate(st.parts["clip"])
            st.parts["clip"] = [both[:, : self.clip.dim]]
            arrays["scene"] = self.scene.probabilities(both[:, self.clip.dim:])
        for key in ("clip", "videomae", "hubert"):
            if key in self.modalities:
                if st.parts.get(key):
                    arrays[key] = np.concatenate(st.parts[key]).astype(np.float32)
                else:
                    absent.append(f"{key}: " + (no_audio if key == "hubert" else "no frames"))
        absent += self._signals(st, arrays, no_audio)
        if "hubert" in arrays and self.hubert_fps < self.hubert.frame_rate:
            from minigpt4.extraction.resample import window_means

            rate = self.hubert.frame_rate
            times = np.concatenate([s + np.arange(len(p)) / rate for p, s in zip(st.parts["hubert"], st.parts["hubert_start"])])
            duration = float((st.info or {}).get("duration", 0.0)) or None
            arrays["hubert"] = window_means(arrays["hubert"], times, self.hubert_fps, duration)
        if "au" in self.modalities:
            if st.au is not None and len(st.au):
                arrays["au"] = np.asarray(st.au, dtype=np.float32)
            else:
                absent.append("au: " + st.au_note.split(" (")[0])
        audio_state = "none" if not st.has_audio else ("present" if st.audio_samples else "empty")
        if lost:
            audio_state = "undecodable"
        transcript: Optional[str] = None
        if self.whisper is not None:
            if not st.has_audio or lost:
                absent.append(f"transcript: {no_audio}")
            elif not st.windows:
                transcript = ""
                audio_state = "silent"
            else:
                texts = [t for part in st.parts.get("whisper", []) for t in part]
                transcript = " ".join(t for t in texts if t).strip()
        if self.bert is not None:
            vec = self.bert.encode(transcript) if transcript else None
            if vec is not None:
                arrays["bert"] = vec
            else:
                absent.append("bert: " + (no_audio if transcript is None else "empty transcript"))
        meta = self.meta(st, audio_state)
        meta[CHECKSUM_META] = content_checksum(arrays, transcript)
        if st.audio_damage and not lost:
            meta["audio_note"] = st.audio_damage
        if absent:
            meta["absent"] = "; ".join(absent)
        return arrays, transcript, meta

    def _signals(self, st: VideoState, arrays: dict[str, np.ndarray], no_audio: str) -> list[str]:
        """Put the measured `prosody`, `flow` and `scene` into `arrays`; returns the absent notes."""
        from minigpt4.extraction.prosody import prosody_track

        absent = []
        if self.prosody is not None:
            track = prosody_track(st.parts.get("prosody", []), self.prosody)
            if len(track):
                arrays["prosody"] = track
            else:
                absent.append("prosody: " + no_audio)
        if self.flow is not None:
            rows = st.parts.get("flow", [])
            if rows and sum(len(r) for r in rows):
                arrays["flow"] = np.concatenate(rows)
            else:
                absent.append("flow: fewer than 2 frames at flow.fps")
        if "scene" in self.modalities and "scene" not in arrays:
            absent.append("scene: " + (self.scene_note or "no frames"))
        return absent

    def meta(self, st: VideoState, audio_state: str) -> dict[str, str]:
        """The `meta_*` strings: which models and rates made the file, so features stay traceable."""
        cfg = self.cfg
        info = st.info or {}
        meta = {
            "extractor": EXTRACTOR_VERSION,
            "modalities": ",".join(self.modalities),
            "source": st.path,
            "duration": f"{float(info.get('duration', 0.0)):.3f}",
            "video_fps": f"{float(info.get('avg_fps', 0.0)):.3f}",
            "decoder": str(info.get("backend", "")),
            **({"decoder_note": str(info["note"])} if info.get("note") else {}),
            "audio": audio_state,
            # the span the audio rows cover (audio is cut to the video's; a shorter track ends earlier)
            **({"audio_seconds": f"{st.audio_samples / AUDIO_SAMPLE_RATE:.3f}"} if st.audio_samples else {}),
            SETTINGS_META: settings_meta(cfg, self.modalities),
        }
        if "clip" in self.modalities:
            meta.update(clip_model=str(cfg.visual.path), clip_fps=str(cfg.visual.fps), clip_output=str(cfg.visual.output))
        meta.update(self._signal_meta())
        if self.videomae is not None:
            meta.update(videomae_model=str(cfg.motion.path), videomae_fps=str(cfg.motion.fps),
                        videomae_clip_len=str(self.videomae.clip_len))
        if self.hubert is not None:
            meta.update(hubert_model=str(cfg.audio.path), hubert_layers=str(cfg.audio.num_layers),
                        hubert_fps=f"{self.hubert_fps:g}")
        if self.whisper is not None:
            meta.update(whisper_model=str(cfg.text.whisper.path), language=str(cfg.text.language))
        if self.bert is not None:
            meta.update(bert_model=self.bert.path)
        if "au" in self.modalities:
            meta.update(au_source=st.au_source or "none", au_note=st.au_note)
            if st.au is not None and len(st.au):
                au_fps = cfg.au.fps if cfg.au.fps is not None else cfg.visual.fps
                meta.update(au_fps=f"{float(au_fps):g}", **({"au_windows": st.au_windows} if st.au_windows else {}))
        return meta

    def _signal_meta(self) -> dict[str, str]:
        """Column names, rates and labels of the measured signals (what measured_evidence.py reads)."""
        from minigpt4.extraction.flow import FLOW_COLUMNS, FLOW_UNIT
        from minigpt4.extraction.prosody import PROSODY_COLUMNS
        from minigpt4.extraction.scene import labels_meta

        meta = {}
        if self.prosody is not None:
            meta.update(prosody_columns=",".join(PROSODY_COLUMNS), prosody_fps=f"{self.prosody.fps:g}")
        if self.flow is not None:
            meta.update(flow_columns=",".join(FLOW_COLUMNS), flow_fps=f"{self.flow.fps:g}", flow_unit=FLOW_UNIT,
                        flow_method=self.flow.method)
        if self.scene is not None:
            meta.update(scene_labels=labels_meta(self.scene.prompts), scene_model=str(self.cfg.visual.path))
        return meta
