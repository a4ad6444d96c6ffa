"""Feature extraction (minigpt4/extraction, run as scripts/extract_features.py) end to end on
small real videos and tiny saved encoders.

Videos are written by OpenCV (frames) and PyAV (audio: espeak-ng speech where installed, a
tone otherwise; a variable-frame-rate file with explicit timestamps). Encoders are tiny
random CLIP / VideoMAE / HuBERT / Whisper / BERT models saved with save_pretrained, so the
real `from_pretrained` and preprocessing paths run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt4.extraction.cli import main
from minigpt4.extraction.decode import stretch_to
from minigpt4.extraction.jobs import list_videos
from minigpt4.extraction.resample import window_means
from minigpt4.extraction.synthetic import make_frames, make_tiny_encoders, make_video, tiny_options
from minigpt4.extraction.video_io import VideoSource, frames_shown_at, read_audio, sample_times
from tests.media_utils import write_openface_csv, write_vfr_video

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "extract_features.py"
VFR_STARTS = [0.0, 0.198, 0.294, 0.325, 0.35, 0.598, 0.873, 1.063, 1.287, 1.46, 1.741, 1.99, 2.011,
              2.271, 2.3, 2.524, 2.594, 2.855, 3.027, 3.131]
GOOD = ("noaudio", "short", "silent", "speech", "vfr")
# (clip frames at 1 fps, videomae clips of 16 frames at 8 fps) for each good video
EXPECTED_COUNTS = {
    "speech": (3, 2),   # 3.0 s: t = 0, 1, 2; 24 motion frames -> 16 + 8 (padded)
    "silent": (2, 1),   # 2.0 s: 16 motion frames -> one full clip
    "noaudio": (3, 2),
    "short": (1, 1),    # 0.4 s (10 frames): one frame; 4 motion frames stretched to 16
    "vfr": (4, 2),      # 3.132 s: t = 0..3; 26 motion frames
}
DIMS = {"clip": 48, "videomae": 40, "hubert": 36, "bert": 32}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_encoders(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "speech.mp4", seconds=3.0, fps=25, audio="speech", text="I am so happy to see you")
    make_video(d / "silent.mp4", seconds=2.0, fps=30, audio="silence", seed=1)
    make_video(d / "noaudio.mp4", seconds=3.0, fps=25, audio=None, seed=2)
    make_video(d / "short.mp4", seconds=0.4, fps=25, audio="tone", seed=3)
    write_vfr_video(d / "vfr.mp4", make_frames(len(VFR_STARTS), seed=4), VFR_STARTS)
    (d / "zero.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d


def cli_args(video_dir: Path, out: Path, encoders: dict[str, Path], *extra: str, options: tuple = ()) -> list[str]:
    return ["--video_dir", str(video_dir), "--output_dir", str(out), "--device", "cpu",
            *extra, "--options", *tiny_options(encoders), *options]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, encoders, video_dir):
    """One real CLI run (a subprocess, two decoding worker processes) over all test videos."""
    out = tmp_path_factory.mktemp("features")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *cli_args(video_dir, out, encoders, "--num_workers", "2", "--batch_size", "4")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    return proc, out


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_vfr_frames_are_picked_by_presentation_time(video_dir, backend):
    with VideoSource(video_dir / "vfr.mp4", backend=backend, short_side=64) as src:
        assert src.info.backend == backend and not src.info.has_audio
        assert src.info.duration == pytest.approx(3.132, abs=0.01)
        times = sample_times(src.info.duration, 8.0)
        first, rest = src.frames_at(times[:7]), src.frames_at(times[7:])  # two calls, in time order
    frames = np.concatenate([first, rest])
    assert frames.shape == (26, 64, 86, 3)
    expected = frames_shown_at(np.asarray(VFR_STARTS), times)
    marker = frames[:, 2:6, 2:6].mean(axis=(1, 2, 3))  # make_frames encodes frame i as brightness 8 * i
    np.testing.assert_allclose(marker, np.minimum(8 * expected, 255), atol=6)


def test_sampling_and_padding_rules():
    np.testing.assert_allclose(sample_times(3.0, 1.0), [0, 1, 2])
    assert len(sample_times(3.2, 1.0)) == 4 and len(sample_times(0.2, 1.0)) == 1
    assert stretch_to(np.arange(4), 16).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    ten = stretch_to(np.arange(10), 16)
    assert ten[0] == 0 and ten[-1] == 9 and (np.diff(ten) >= 0).all() and set(ten) == set(range(10))


def test_audio_stream_segments_concatenate_to_the_track(video_dir):
    whole = read_audio(video_dir / "speech.mp4")
    assert whole.dtype == np.float32 and len(whole) / 16000 == pytest.approx(3.0, abs=0.1)
    assert np.abs(whole).max() > 0.05  # speech or tone, not silence
    with VideoSource(video_dir / "speech.mp4", backend="pyav") as src:
        parts = [src.audio.read_until(1.0), src.audio.read_until(2.5), src.audio.read_until(None)]
    assert [len(p) for p in parts[:2]] == [16000, 24000]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_list_videos_rejects_duplicate_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "b" / "clip.avi").write_bytes(b"x")
    with pytest.raises(ValueError, match="share the id 'clip'"):
        list_videos(video_dir=str(tmp_path))
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\na/clip.mp4\n\n")
    assert list_videos(video_list=str(lst)) == [("clip", tmp_path / "a" / "clip.mp4")]


# ----------------------------------------------------------------------------- the CLI


def test_cli_reports_broken_files_and_finishes_the_rest(extracted):
    proc, out = extracted
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "5 done, 0 skipped, 2 failed" in proc.stdout
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {r["video_id"]: r["reason"] for r in records}
    assert set(reasons) == {"zero", "corrupt"}
    assert "zero-byte" in reasons["zero"] and "cannot open" in reasons["corrupt"]
    assert all(r["video"].endswith(f"{r['video_id']}.mp4") for r in records)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{v}.npz" for v in GOOD] + ["failures.jsonl"])


def test_shapes_follow_the_fps_and_clip_rules(extracted):
    _, out = extracted
    for vid, (n_frames, n_clips) in EXPECTED_COUNTS.items():
        z = load(out / f"{vid}.npz")
        assert z["clip"].shape == (n_frames, DIMS["clip"]) and z["clip"].dtype == np.float16, vid
        assert z["videomae"].shape == (n_clips, DIMS["videomae"]), vid
        assert "au" not in z  # no OpenFace output given: absent, never zero-filled
        assert str(z["meta_au_source"]) == "none" and "no --openface_dir" in str(z["meta_au_note"])
        assert str(z["meta_modalities"]) == "clip,videomae,hubert,au,transcript,bert,prosody,flow,scene"
        assert str(z["meta_clip_fps"]) == "1.0" and str(z["meta_videomae_clip_len"]) == "16"
        assert np.isfinite(z["clip"].astype(np.float32)).all()
        # measured signals (tests/test_signals.py checks their values): flow steps between the
        # frames sampled at 8 fps (the VideoMAE frames), prosody 10 Hz windows of the audio
        motion_frames = {"speech": 24, "silent": 16, "noaudio": 24, "short": 4, "vfr": 26}[vid]
        assert z["flow"].shape == (motion_frames - 1, 2) and str(z["meta_flow_columns"]) == "mean_speed,p90_speed"
        if "meta_audio_seconds" in z:
            assert z["prosody"].shape == (math.ceil(float(z["meta_audio_seconds"]) * 10 - 1e-6), 4), vid
        else:
            assert "prosody" not in z and "prosody: no audio track" in str(z["meta_absent"])
        assert "scene" not in z and "without a text tower" in str(z["meta_absent"])  # the tiny CLIP is vision-only
    assert float(load(out / "vfr.npz")["meta_duration"]) == pytest.approx(3.132, abs=0.01)


def test_audio_edge_cases(extracted, encoders, video_dir):
    from transformers import AutoTokenizer, HubertModel

    _, out = extracted
    noaudio = load(out / "noaudio.npz")
    assert not {"hubert", "bert", "transcript"} & set(noaudio)
    assert str(noaudio["meta_audio"]) == "none" and "hubert: no audio track" in str(noaudio["meta_absent"])

    silent = load(out / "silent.npz")
    assert str(silent["transcript"]) == "" and "bert" not in silent and str(silent["meta_audio"]) == "silent"
    assert silent["hubert"].shape[1] == DIMS["hubert"]

    speech = load(out / "speech.npz")
    text = str(speech["transcript"])
    assert text  # the tiny Whisper emits byte tokens; the pipeline must carry them through
    n_tokens = len(AutoTokenizer.from_pretrained(encoders["bert"])(text, truncation=True, max_length=128).input_ids)
    assert speech["bert"].shape == (n_tokens, DIMS["bert"])
    samples = min(len(read_audio(video_dir / "speech.mp4")), 3 * 16000)  # audio is cut to the video's 3 s
    model = HubertModel.from_pretrained(encoders["hubert"])
    native = int(model._get_feat_extract_output_lengths(samples))  # 50 Hz frames
    # stored as 10 Hz window means (audio.fps, the default): 5 frames a window
    assert speech["hubert"].shape == (math.ceil(native / 5), DIMS["hubert"])
    assert str(speech["meta_hubert_fps"]) == "10"


def test_features_equal_a_direct_forward_of_the_encoders(extracted, encoders, video_dir):
    import torch
    from transformers import AutoFeatureExtractor, AutoImageProcessor, CLIPVisionModel, HubertModel, VideoMAEModel

    _, out = extracted
    speech, short = load(out / "speech.npz"), load(out / "short.npz")
    # Frames are decoded once for every modality, at the largest short side any of them needs:
    # flow's 112 px here (the tiny encoders take 32 px and their processors scale the frames down).
    side = 112
    with torch.no_grad():
        # CLIP: the pooled output of the frame on screen at t = 1 s.
        with VideoSource(video_dir / "speech.mp4", backend="decord", short_side=side) as src:
            frame = src.frames_at(np.array([1.0]))
        pix = AutoImageProcessor.from_pretrained(encoders["clip"])(images=list(frame), return_tensors="pt")
        ref = CLIPVisionModel.from_pretrained(encoders["clip"])(**pix).pooler_output[0].numpy()
        np.testing.assert_allclose(speech["clip"][1].astype(np.float32), ref, atol=2e-2, rtol=1e-2)
        # VideoMAE: 0.4 s at 8 fps = 4 frames, each repeated 4 times to fill the 16-frame clip.
        with VideoSource(video_dir / "short.mp4", backend="decord", short_side=side) as src:
            four = src.frames_at(sample_times(src.info.duration, 8.0))
        assert len(four) == 4
        pix = AutoImageProcessor.from_pretrained(encoders["videomae"])([list(np.repeat(four, 4, axis=0))], return_tensors="pt")
        ref = VideoMAEModel.from_pretrained(encoders["videomae"])(**pix).last_hidden_state.mean(dim=1)[0].numpy()
        np.testing.assert_allclose(short["videomae"][0].astype(np.float32), ref, atol=2e-2, rtol=1e-2)
        # HuBERT: mean of the last three hidden layers over the normalised 16 kHz track.
        wave = read_audio(video_dir / "speech.mp4")[: 3 * 16000]
        inp = AutoFeatureExtractor.from_pretrained(encoders["hubert"])(wave, sampling_rate=16000, return_tensors="pt")
        hs = HubertModel.from_pretrained(encoders["hubert"]).eval()(inp.input_values, output_hidden_states=True).hidden_states
        ref = torch.stack(hs[-3:]).mean(dim=0)[0].numpy()
        # then the mean of each 0.1 s window (audio.fps 10) of the 50 Hz frames
        ref = window_means(ref, np.arange(len(ref)) / 50.0, fps=10.0, duration=3.0)
        np.testing.assert_allclose(speech["hubert"].astype(np.float32), ref, atol=2e-2, rtol=1e-2)


def test_hubert_window_means_follow_segment_times(encoders, video_dir, tmp_path, capsys):
    """With 1 s segments, HuBERT gives 49 frames a segment (not 50), so frame i of segment k
    sits at k + i/50 s: the 10 Hz windows must be built from those times, not frame counts."""
    listing = tmp_path / "speech.txt"
    listing.write_text(str(video_dir / "speech.mp4") + "\n")

    def run(out: Path, fps: str) -> dict:
        args = ["--video_list", str(listing)] + cli_args(
            video_dir, out, encoders, "--num_workers", "0", "--modalities", "hubert",
            options=("decode.segment_seconds=1", f"audio.fps={fps}"))[2:]
        assert main(args) == 0, capsys.readouterr()
        return load(out / "speech.npz")

    native, pooled = run(tmp_path / "native", "null"), run(tmp_path / "pooled", "10")
    assert native["hubert"].shape == (3 * 49, DIMS["hubert"]) and str(native["meta_hubert_fps"]) == "50"
    times = np.concatenate([k + np.arange(49) / 50.0 for k in range(3)])
    expected = window_means(native["hubert"].astype(np.float32), times, fps=10.0, duration=3.0)
    assert pooled["hubert"].shape == expected.shape == (30, DIMS["hubert"])
    np.testing.assert_allclose(pooled["hubert"].astype(np.float32), expected, atol=2e-3)
    # window [1.0, 1.1) s holds frames 0-4 of the second segment (rows 49-53), not rows 50-54
    np.testing.assert_allclose(expected[10], native["hubert"][49:54].astype(np.float32).mean(axis=0), atol=1e-6)


def test_rerun_skips_everything(extracted, encoders, video_dir, tmp_path, capsys):
    _, out = extracted
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    listing = tmp_path / "good.txt"
    listing.write_text("\n".join(str(video_dir / f"{v}.mp4") for v in GOOD) + "\n")
    args = cli_args(video_dir, out, encoders, "--num_workers", "0")
    args[0:2] = ["--video_list", str(listing)]
    assert main(args) == 0
    assert "0 done, 5 skipped, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == stamps
    assert not (out / "failures.jsonl").exists()  # this run had no failure
    # A file made for more modalities covers a subset of them.
    at = args.index("--options")
    assert main(args[:at] + ["--modalities", "clip", "hubert"] + args[at:]) == 0
    assert "0 done, 5 skipped" in capsys.readouterr().out
    # --no-skip_existing extracts again (and rewrites the file atomically).
    one = tmp_path / "one.txt"
    one.write_text(str(video_dir / "short.mp4") + "\n")
    assert main(["--video_list", str(one)] + args[2:at] + ["--no-skip_existing"] + args[at:]) == 0
    assert "1 done, 0 skipped" in capsys.readouterr().out
    assert (out / "short.npz").stat().st_mtime_ns != stamps["short.npz"]


def test_interrupted_write_leaves_no_partial_file_and_rerun_completes(encoders, video_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "feat"
    listing = tmp_path / "three.txt"
    listing.write_text("\n".join(str(video_dir / f"{v}.mp4") for v in ("noaudio", "short", "speech")) + "\n")
    args = ["--video_list", str(listing)] + cli_args(video_dir, out, encoders, "--num_workers", "0",
                                                     "--modalities", "clip", "hubert")[2:]
    real_savez = np.savez
    calls = {"n": 0}

    def savez_then_interrupt(fh, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # half a file on disk, then Ctrl-C
            fh.write(b"PK\x03\x04 partial")
            raise KeyboardInterrupt
        return real_savez(fh, **arrays)

    monkeypatch.setattr(np, "savez", savez_then_interrupt)
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["noaudio.npz"]  # no partial or temp file
    monkeypatch.setattr(np, "savez", real_savez)
    assert main(args) == 0
    assert "2 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["noaudio.npz", "short.npz", "speech.npz"]


def test_openface_csv_and_binary_give_au(encoders, video_dir, tmp_path, capsys):
    of_dir = tmp_path / "openface"
    of_dir.mkdir()
    rows, aus = [], []
    for i in range(75):  # speech.mp4: 3 s at 25 fps; the face is lost during [1, 2) s
        t = i / 25
        vec = np.full(35, float(i % 7))
        rows.append(dict(frame=i + 1, face_id=0, timestamp=t, confidence=0.95, success=int(not 1 <= t < 2), aus=vec))
        aus.append((t, vec))
    write_openface_csv(of_dir / "speech.csv", rows)
    (of_dir / "silent.csv").write_text("frame, timestamp, confidence, success, AU01_r\n1, 0, 0.9, 1, 0.2\n")
    fake = tmp_path / "FeatureExtraction"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.media_utils import write_openface_csv\n"
        "a = sys.argv; v = pathlib.Path(a[a.index('-f') + 1]); o = pathlib.Path(a[a.index('-out_dir') + 1])\n"
        "write_openface_csv(o / (v.stem + '.csv'), [dict(frame=1, face_id=0, timestamp=0.1, confidence=0.9, success=1)])\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "feat"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(video_dir / f"{v}.mp4") for v in ("speech", "silent", "short")) + "\n")
    args = ["--video_list", str(listing)] + cli_args(
        video_dir, out, encoders, "--num_workers", "0", "--modalities", "clip", "au",
        "--openface_dir", str(of_dir), "--openface_bin", str(fake))[2:]
    assert main(args) == 1
    assert "2 done, 0 skipped, 1 failed" in capsys.readouterr().out
    speech = load(out / "speech.npz")
    assert speech["au"].shape == (2, 35) and str(speech["meta_au_source"]) == "openface_csv"
    for row, window in zip(speech["au"], (0, 2)):
        expected = np.mean([v for t, v in aus if window <= t < window + 1], axis=0)
        np.testing.assert_allclose(row.astype(np.float32), expected, atol=1e-2)
    assert "25 dropped" in str(speech["meta_au_note"])
    # the rows' windows, since the face-less one is left out (measured_evidence words AU timings from them)
    assert str(speech["meta_au_fps"]) == "1" and str(speech["meta_au_windows"]) == "0,2"
    short = load(out / "short.npz")  # no CSV: the binary ran
    assert short["au"].shape == (1, 35) and str(short["meta_au_source"]) == "openface_bin"
    failure = json.loads((out / "failures.jsonl").read_text())
    assert failure["video_id"] == "silent" and "missing column" in failure["reason"]


def test_bad_config_key_names_the_nearest_one(encoders, video_dir, tmp_path, capsys):
    assert main(cli_args(video_dir, tmp_path / "o", encoders, options=("visual.fsp=2",))) == 2
    assert "visual.fps" in capsys.readouterr().err


def test_help_does_not_import_torch_or_transformers():
    code = (
        "import runpy, sys\nsys.argv = ['extract_features.py', '--help']\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert "--openface_dir" in proc.stdout and "--skip_existing, --no-skip_existing" in proc.stdout
    assert "HEAVY False False" in proc.stdout
