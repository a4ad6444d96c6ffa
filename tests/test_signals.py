"""Measured signals at extraction (issue 16): prosody, optical flow, CLIP zero-shot scene labels.

Media with a known truth: a video whose audio is silence, then a sine gliding 150 -> 300 Hz
over 2 s, then silence again, and whose only motion is a square sliding between 2 s and 3 s.
The scene path runs a tiny random full CLIP (vision + text towers) built in a temp folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minigpt4.datasets.measured_evidence import STILL_BELOW
from minigpt4.extraction.cli import main
from minigpt4.extraction.synthetic import make_tiny_encoders, make_tiny_full_clip, mux_audio, tiny_options, write_video_cv2

SR = 16000
SECONDS = 4.0
GLIDE = (0.5, 2.5)  # the sine sounds in [0.5, 2.5) s, 150 Hz at its start, doubling over its 2 s
BURST = (2.0, 3.0)  # the square moves in [2, 3) s
F0_TOLERANCE = 0.05  # pitch within 5% of the truth over voiced windows (measured: < 1%)


def glide_f0(t: np.ndarray) -> np.ndarray:
    """The true pitch (Hz) at time t; 0 outside the glide."""
    inside = (t >= GLIDE[0]) & (t < GLIDE[1])
    return np.where(inside, 150.0 * 2 ** ((t - GLIDE[0]) / 2.0), 0.0)


def burst_frames(fps: int = 25, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A textured still ground and a textured 40 px square that slides 80 px right during BURST only
    (texture everywhere: a flat patch's inside gives optical flow nothing to follow)."""
    import cv2

    w, h = size
    rng = np.random.default_rng(0)
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), 2)  # noqa: E731 - real scenes have coarse structure too
    ground = blur(rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8))
    patch = blur(rng.integers(130, 256, size=(40, 40, 3), dtype=np.uint8))
    frames = []
    for i in range(int(SECONDS * fps)):
        x = int(round(20 + 80 * min(max(i / fps - BURST[0], 0.0), BURST[1] - BURST[0])))
        f = ground.copy()
        f[40:80, x:x + 40] = patch
        frames.append(f)
    return np.stack(frames)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("signals")
    t = np.arange(int(SECONDS * SR)) / SR
    f0 = glide_f0(t)
    wave = (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) * (f0 > 0)).astype(np.float32)
    silent = d / ".burst.noaudio.mp4"
    write_video_cv2(silent, burst_frames(), 25)
    (d / "videos").mkdir()
    mux_audio(silent, wave, d / "videos" / "glide.mp4")
    silent.unlink()
    return d / "videos"


def run(video_dir: Path, out: Path, *extra: str, options: tuple = ()) -> int:
    return main(["--video_dir", str(video_dir), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
                 *extra, *(("--options", *options) if options else ())])


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def signals(video_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out")
    assert run(video_dir, out, "--modalities", "prosody", "flow") == 0
    return load(out / "glide.npz")


def test_prosody_follows_the_known_pitch_glide(signals):
    z = signals
    assert str(z["meta_prosody_columns"]) == "f0_hz,voiced_prob,rms_dbfs,speech" and str(z["meta_prosody_fps"]) == "10"
    p = z["prosody"].astype(np.float32)
    assert p.shape == (40, 4)  # 4 s at 10 windows per second
    centre = (np.arange(40) + 0.5) / 10
    well_inside = (centre > GLIDE[0] + 0.1) & (centre < GLIDE[1] - 0.1)
    truth = glide_f0(centre)
    assert (p[well_inside, 0] > 0).all(), "every window well inside the glide is voiced"
    err = np.abs(p[well_inside, 0] / truth[well_inside] - 1)
    assert err.max() < F0_TOLERANCE, f"f0 off by up to {err.max():.1%}"
    assert p[well_inside, 1].min() > 0.5 and (p[well_inside, 3] == 1).all()
    assert p[well_inside, 2] == pytest.approx(-13.5, abs=0.5)  # a 0.3-amplitude sine: 20 log10(0.3 / sqrt 2)
    silence = (centre < GLIDE[0] - 0.1) | (centre > GLIDE[1] + 0.1)
    assert (p[silence, 0] == 0).all() and (p[silence, 3] == 0).all() and (p[silence, 2] <= -60).all()


def check_burst(flow: np.ndarray) -> None:
    """The flow of the burst video: its peak within BURST, movement throughout it, still elsewhere."""
    assert flow.shape == (31, 2)  # 32 frames at 8 fps: 31 steps
    start = np.arange(31) / 8.0
    in_burst = (start >= BURST[0]) & (start + 1 / 8 <= BURST[1])
    outside = (start + 1 / 8 <= BURST[0]) | (start >= BURST[1])
    assert BURST[0] <= start[np.argmax(flow[:, 0])] < BURST[1]
    assert flow[in_burst, 0].min() > 0.03  # the square moves 0.4 frame diagonals per second
    # still elsewhere: codec noise only (measured <= 0.0065 with dis, 0.0026 with farneback), under
    # the level measured_evidence words as still, and >= 10x below every step of the burst
    assert flow[outside, 0].max() < STILL_BELOW and flow[in_burst, 0].min() > 10 * flow[outside, 0].max()
    assert flow[in_burst, 1].min() > 3 * flow[outside, 1].max()  # the 90th percentile too


def test_flow_peaks_in_the_motion_burst_and_is_still_elsewhere(signals):
    z = signals
    assert str(z["meta_flow_columns"]) == "mean_speed,p90_speed" and str(z["meta_flow_fps"]) == "8"
    assert str(z["meta_flow_method"]) == "dis" and str(z["meta_flow_unit"]) == "frame diagonals per second"
    check_burst(z["flow"].astype(np.float32))


def test_farneback_flow_sees_the_same_burst(video_dir, signals, tmp_path):
    assert run(video_dir, tmp_path, "--modalities", "flow", options=("flow.method=farneback",)) == 0
    flow = load(tmp_path / "glide.npz")["flow"].astype(np.float32)
    check_burst(flow)
    dis = signals["flow"].astype(np.float32)
    steady = (np.arange(31) / 8.0 >= BURST[0]) & (np.arange(31) / 8.0 + 1 / 8 <= BURST[1] - 1 / 8)
    np.testing.assert_allclose(flow[steady, 0], dis[steady, 0], rtol=0.35)  # two methods, one scale


def test_signals_do_not_depend_on_the_segment_length(video_dir, signals, tmp_path):
    """Decoded 1 s at a time, the flow is the same and the pitch within pyin's per-segment smoothing."""
    assert run(video_dir, tmp_path, "--modalities", "prosody", "flow", options=("decode.segment_seconds=1",)) == 0
    z = load(tmp_path / "glide.npz")
    np.testing.assert_allclose(z["flow"].astype(np.float32), signals["flow"].astype(np.float32), atol=1e-4)
    a, b = z["prosody"].astype(np.float32), signals["prosody"].astype(np.float32)
    assert a.shape == b.shape
    np.testing.assert_allclose(a[:, 2], b[:, 2], atol=0.05)  # loudness: exactly the same samples
    voiced = (a[:, 0] > 0) & (b[:, 0] > 0)
    assert voiced.sum() >= 18 and np.abs(a[voiced, 0] / b[voiced, 0] - 1).max() < 0.02


def test_prosody_tracker_rows_do_not_depend_on_how_the_track_is_cut():
    from minigpt4.extraction.config import DEFAULT_CONFIG, load_extract_config
    from minigpt4.extraction.prosody import ProsodySettings, ProsodyTracker, prosody_track

    settings = ProsodySettings.from_config(load_extract_config(str(DEFAULT_CONFIG)))
    assert (settings.hop, settings.frame_length) == (1600, 1024)
    t = np.arange(int(3.05 * SR)) / SR
    f0 = glide_f0(t)
    wave = (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) * (f0 > 0)).astype(np.float32)

    def rows(chunk: int) -> np.ndarray:
        tracker = ProsodyTracker(settings)
        parts = [tracker.push(wave[i:i + chunk], final=i + chunk >= len(wave)) for i in range(0, len(wave), chunk)]
        return prosody_track(parts, settings)

    whole = rows(len(wave))
    assert whole.shape == (31, 4)  # the last window holds 0.05 s
    for chunk in (7777, SR):
        cut = rows(chunk)
        np.testing.assert_allclose(cut[:, 2:], whole[:, 2:], atol=1e-4)
        both = (cut[:, 0] > 0) & (whole[:, 0] > 0)
        assert both.sum() >= 18 and np.abs(cut[both, 0] / whole[both, 0] - 1).max() < 0.02
    short = rows(len(wave))[:3]  # a clip shorter than the speech bridge still gets one flag per window
    assert prosody_track([short[:, :3]], settings).shape == (3, 4)


def test_workers_fork_safely_after_flow_ran_in_the_main_process(video_dir, tmp_path):
    """OpenCV's thread pool does not survive fork: workers forked after the main process had measured
    flow once hung on their first OpenCV call. A fresh process (so pytest's own threads play no part)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, cv2\n"
        "from minigpt4.extraction.flow import FlowSettings, FlowTracker\n"
        "from minigpt4.extraction.cli import main\n"
        "cv2.setNumThreads(2)\n"
        "FlowTracker(FlowSettings(8.0, 112, 'dis')).push(np.random.default_rng(0).integers(0, 255, (4, 112, 200, 3), np.uint8))\n"
        "sys.exit(main(['--video_dir', sys.argv[1], '--output_dir', sys.argv[2], '--device', 'cpu', '--num_workers', '2',"
        " '--modalities', 'flow']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(video_dir), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load(tmp_path / "glide.npz")["flow"].shape == (31, 2)


def test_rerun_with_other_prosody_settings_redoes_the_file(video_dir, tmp_path, capsys):
    out = tmp_path / "feat"
    assert run(video_dir, out, "--modalities", "prosody") == 0
    capsys.readouterr()
    assert run(video_dir, out, "--modalities", "prosody") == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out
    assert run(video_dir, out, "--modalities", "prosody", options=("prosody.fmax=300",)) == 0
    printed = capsys.readouterr().out
    assert "1 done, 0 skipped" in printed and "prosody.fmax: 400.0 -> 300.0" in printed
    settings = json.loads(str(load(out / "glide.npz")["meta_settings"]))
    assert settings["prosody"]["fmax"] == "300.0"
    assert run(video_dir, out, "--modalities", "flow") == 0  # a modality the file lacks: extracted again
    assert "1 done, 0 skipped" in capsys.readouterr().out


def test_bad_signal_settings_are_refused_before_anything_runs(video_dir, tmp_path, capsys):
    assert run(video_dir, tmp_path, "--modalities", "prosody", options=("prosody.fps=7",)) == 2
    assert "prosody.fps" in capsys.readouterr().err
    assert run(video_dir, tmp_path, "--modalities", "flow", options=("flow.method=lucas",)) == 2
    assert "flow.method" in capsys.readouterr().err


def test_a_failing_measurement_is_reported_and_the_others_go_on(video_dir, tmp_path, monkeypatch):
    import librosa

    def broken(*args, **kwargs):
        raise RuntimeError("pyin exploded")

    from minigpt4.extraction import prosody

    monkeypatch.setattr(librosa, "pyin", broken)
    monkeypatch.setattr(prosody, "warm_up", lambda settings: None)  # it would meet the error before any video
    assert run(video_dir, tmp_path, "--modalities", "flow", "prosody") == 1
    failure = json.loads((tmp_path / "failures.jsonl").read_text())
    assert failure["video_id"] == "glide" and "pyin exploded" in failure["reason"]
    assert not (tmp_path / "glide.npz").exists()


# ----------------------------------------------------------------------------- scene


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    paths = make_tiny_encoders(root)
    paths["full_clip"] = make_tiny_full_clip(root / "full_clip")
    return paths


def test_scene_labels_come_from_the_clip_text_tower(video_dir, encoders, tmp_path):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from minigpt4.extraction.video_io import VideoSource

    prompts = ["a person in an office", "a person outdoors", "a crowded party"]
    opts = (*tiny_options(encoders), f"visual.path={encoders['full_clip']}", f"visual.scene_prompts={json.dumps(prompts)}")
    assert run(video_dir, tmp_path / "both", "--modalities", "clip", "scene", options=opts) == 0
    assert run(video_dir, tmp_path / "clip", "--modalities", "clip", options=opts) == 0
    z, plain = load(tmp_path / "both" / "glide.npz"), load(tmp_path / "clip" / "glide.npz")
    scene = z["scene"].astype(np.float32)
    assert scene.shape == (1, 3) and abs(scene.sum() - 1) < 1e-2 and (scene > 0).all()
    assert json.loads(str(z["meta_scene_labels"])) == prompts
    # loading the whole CLIPModel for the labels leaves the clip features as the vision model gives them
    np.testing.assert_array_equal(z["clip"], plain["clip"])
    # the probabilities are CLIP's zero-shot recipe on the mean of the frames' normalised image embeddings
    model = CLIPModel.from_pretrained(encoders["full_clip"]).eval()
    tok = AutoTokenizer.from_pretrained(encoders["full_clip"])
    with VideoSource(video_dir / "glide.mp4", short_side=32) as src:
        frames = src.frames_at(np.arange(4.0))
    pix = AutoImageProcessor.from_pretrained(encoders["full_clip"])(images=list(frames), return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(**pix).pooler_output)
        enc = tok(prompts, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**enc).pooler_output)
        img = torch.nn.functional.normalize(torch.nn.functional.normalize(img, dim=-1).mean(0), dim=-1)
        ref = (model.logit_scale.exp() * torch.nn.functional.normalize(txt, dim=-1) @ img).softmax(-1).numpy()
    np.testing.assert_allclose(scene[0], ref, atol=2e-3)


def test_scene_is_skipped_with_a_note_for_a_vision_only_encoder(video_dir, encoders, tmp_path):
    assert run(video_dir, tmp_path, "--modalities", "clip", "scene", options=tuple(tiny_options(encoders))) == 0
    z = load(tmp_path / "glide.npz")
    assert "scene" not in z and z["clip"].shape == (4, 48)
    assert "scene: visual encoder" in str(z["meta_absent"]) and "text tower" in str(z["meta_absent"])
