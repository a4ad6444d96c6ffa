"""A tiny trained HERO run on real (synthetic) videos, for the inference tests and the web app's.

`build_tiny_video_run(tmp_path)` does what a user does, shrunk to seconds on a CPU: writes short
videos (tests' media helpers in `minigpt4/extraction/synthetic.py`), extracts them with tiny
random encoders through `scripts/extract_features.py`'s code, writes a labels file, trains
`hero-train` for two steps with a tiny LLM, and (optionally) runs `hero-eval` on the test
split. The run folder then holds config.yaml, checkpoints and extraction.json, as a real
run's does.

Use the module-scoped fixture in a test module: `from tests.infer_utils import tiny_video_run`
(it needs the session fixture `tiny_llm_dir` of tests/conftest.py), or call the function.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

LABELS = ["neutral", "angry", "happy", "sad"]
# what the tiny encoders of `make_tiny_encoders` output (au: OpenFace's 35 columns, absent here)
ENCODER_DIMS = {"clip": 48, "videomae": 40, "hubert": 36, "bert": 32, "au": 35}
MAX_DIM = 48
MAX_NEW_TOKENS = 16  # hero-eval's generation budget in the fixture (an inference comparing with it uses the same)
EVAL_BATCH = 4
# video_id -> (split, emotion, audio of make_video, seed): two train clips, two test clips
CLIPS = {
    "train_a": ("train", "happy", "tone", 0),
    "train_b": ("train", "sad", None, 1),
    "test_c": ("test", "happy", "tone", 2),
    "test_d": ("test", "sad", None, 3),
}
VIDEO_SECONDS = 2.0
VIDEO_FPS = 10
VIDEO_SIZE = (64, 48)


@dataclass
class TinyVideoRun:
    """What `build_tiny_video_run` made. `videos`: the good test-split videos (not trained on);
    `corrupt`: random bytes named `.mp4`; `eval_dir`: hero-eval's output on the test split
    (predictions.jsonl), None when not evaluated."""

    run_dir: Path
    videos: list[Path]
    corrupt: Path
    eval_dir: Optional[Path]
    root: Path = field(default=Path("."))
    encoders: dict[str, Path] = field(default_factory=dict)
    features_dir: Path = field(default=Path("."))
    labels: Path = field(default=Path("."))
    extract_options: list[str] = field(default_factory=list)  # `--options` pointing at the tiny encoders


def make_videos(out: Path) -> dict[str, Path]:
    """The CLIPS videos in `out` (2 s, 10 fps, 64x48), id -> path."""
    from minigpt4.extraction.synthetic import make_video

    out.mkdir(parents=True, exist_ok=True)
    return {vid: make_video(out / f"{vid}.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=VIDEO_SIZE,
                            audio=audio, seed=seed)
            for vid, (_, _, audio, seed) in CLIPS.items()}


def write_corrupt_video(path: Path, seed: int = 0) -> Path:
    """4 KiB of random bytes with a video suffix: what a broken upload looks like."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def extract(video_dir: Path, out: Path, options: list[str]) -> None:
    """scripts/extract_features.py in this process (no decoding workers), every video must succeed."""
    from minigpt4.extraction.cli import main as extract_main

    code = extract_main(["--video_dir", str(video_dir), "--output_dir", str(out), "--device", "cpu",
                         "--num_workers", "0", "--batch_size", "4", "--options", *options])
    assert code == 0, f"extraction failed (exit {code}); see {out / 'failures.jsonl'}"


def write_labels(path: Path) -> Path:
    """The labels JSON (README "Your own data"): every clip labelled, no evidence, no text
    (so the feature file's transcript is the one the model reads, as at inference)."""
    records = [{"video_id": vid, "split": split, "emotion": emotion} for vid, (split, emotion, _, _) in CLIPS.items()]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_config(root: Path, llm_dir: Path, features: Path, labels: Path) -> Path:
    """A HERO config small enough to train two steps in seconds, dims as the tiny encoders give."""
    import yaml

    cfg: dict[str, Any] = {
        "model": {"arch": "hero", "video_dim": ENCODER_DIMS["videomae"], "audio_dim": ENCODER_DIMS["hubert"],
                  "au_dim": ENCODER_DIMS["au"], "text_dim": ENCODER_DIMS["bert"], "visual_dim": ENCODER_DIMS["clip"],
                  "hidden_dim": 32, "num_heads": 4, "num_queries": 4, "num_qformer_layers": 1,
                  "num_output_queries": 4, "label_names": LABELS, "evidence_max_len": 6,
                  "evidence_decoder": {"embed_dim": 32, "num_layers": 1, "num_heads": 4, "max_len": 16},
                  "stmil": {"hidden_dim": 32}, "sccl_dim": 32, "use_cls_head": True, "lambda_cls": 0.5,
                  "max_txt_len": 192,
                  "llm": {"path": str(llm_dir), "lora_r": 4, "lora_alpha": 8, "dtype": "float32"}},
        "datasets": {"hero_dataset": {"max_dim": MAX_DIM, "label_names": LABELS, "max_len": 8,
                                      "build_info": {"images": {"storage": str(features)},
                                                     "annotations": {"storage": str(labels)}}}},
        "run": {"task": "hero", "output_dir": str(root / "run"), "device": "cpu", "seed": 7, "max_epoch": 2,
                "iters_per_epoch": 1, "batch_size_train": 2, "batch_size_eval": EVAL_BATCH, "valid_splits": [],
                "progress_bar": False},
    }
    path = root / "hero_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def build_tiny_video_run(tmp_path: Path, llm_dir: Optional[Path] = None, evaluate: bool = True) -> TinyVideoRun:
    """Videos -> features -> labels -> two training steps (-> hero-eval on the test split), all in `tmp_path`.

    `llm_dir`: a tiny LLM folder (the `tiny_llm_dir` fixture); None makes one in `tmp_path`.
    About 15-25 s on a 2-core CPU.
    """
    from minigpt4.cli.evaluate import run as eval_run
    from minigpt4.cli.train import run as train_run
    from minigpt4.extraction.synthetic import make_tiny_encoders, tiny_options

    root = Path(tmp_path)
    if llm_dir is None:
        from minigpt4.common.tiny_llm import make_tiny_llm

        llm_dir = make_tiny_llm(root / "llm", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    encoders = make_tiny_encoders(root / "encoders")
    options = tiny_options(encoders)
    videos = make_videos(root / "videos")
    features = root / "features"
    extract(root / "videos", features, options)
    labels = write_labels(root / "labels.json")
    cfg = write_config(root, Path(llm_dir), features, labels)
    train_run(["--cfg-path", str(cfg)])
    run_dir = root / "run"
    eval_dir = None
    if evaluate:
        eval_dir = run_dir / "eval_test"
        eval_run(["--cfg-path", str(run_dir / "config.yaml"), "--ckpt", str(run_dir), "--split", "test",
                  "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch_size", str(EVAL_BATCH), "--out", str(eval_dir)])
    test_videos = [videos[vid] for vid, (split, _, _, _) in CLIPS.items() if split == "test"]
    return TinyVideoRun(run_dir=run_dir, videos=test_videos, corrupt=write_corrupt_video(root / "upload" / "corrupt.mp4"),
                        eval_dir=eval_dir, root=root, encoders=encoders, features_dir=features, labels=labels,
                        extract_options=options)


@pytest.fixture(scope="module")
def tiny_video_run(tmp_path_factory, tiny_llm_dir) -> TinyVideoRun:
    """One `build_tiny_video_run` per test module (import this fixture into the module)."""
    return build_tiny_video_run(tmp_path_factory.mktemp("tiny_video_run"), llm_dir=tiny_llm_dir)
