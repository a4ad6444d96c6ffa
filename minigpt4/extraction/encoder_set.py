"""The encoding side of extraction, in the main process: every model loaded once, fed in batches.

`EncoderSet.consume` takes each decoded segment, `finalize` turns a finished video's outputs
into the arrays, transcript and `meta_*` strings of its feature file (format: docs/ARCHITECTURE.md,
"Feature files").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from minigpt4.extraction.batching import BatchQueue, VideoState
from minigpt4.extraction.config import EXTRACTOR_VERSION, bert_path
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
        self.clip = self.videomae = self.hubert = self.whisper = self.bert = None
        self.queues: dict[str, BatchQueue] = {}
        if "clip" in modalities:
            self.clip = fx.CLIPFrameEncoder(cfg.visual.path, device, precision, batch_size, output=cfg.visual.output)
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
        no_audio = lost or "no audio track"
        for key in ("clip", "videomae", "hubert"):
            if key in self.modalities:
                if st.parts.get(key):
                    arrays[key] = np.concatenate(st.parts[key]).astype(np.float32)
                else:
                    absent.append(f"{key}: " + (no_audio if key == "hubert" else "no frames"))
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
        if self.clip is not None:
            meta.update(clip_model=str(cfg.visual.path), clip_fps=str(cfg.visual.fps), clip_output=str(cfg.visual.output))
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
        return meta
