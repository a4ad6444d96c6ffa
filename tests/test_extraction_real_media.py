"""Extraction on real-format media that is damaged the way real files are (issue 20, cases 4 and 8-13).

Media are written by PyAV in the tests (tests/media_utils.py): an mp4 with its index at the
front (`faststart`) cut at 50% and 90% of its bytes, a cut MKV and AVI, damaged AAC packets,
a variable-frame-rate mp4. Encoders are the tiny random ones of minigpt4/extraction/synthetic.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minigpt4.extraction.cli import main
from minigpt4.extraction.config import DEFAULT_CONFIG
from minigpt4.extraction.media_checks import check_timestamps, scan_packets
from minigpt4.extraction.synthetic import make_frames, make_tiny_encoders, tiny_options
from minigpt4.extraction.video_io import VideoDecodeError, VideoSource, sample_times
from tests.media_utils import cut_file, damage_audio_packets, write_av_video, write_vfr_video

VFR_STARTS = [0.0, 0.198, 0.294, 0.325, 0.35, 0.598, 0.873, 1.063, 1.287, 1.46, 1.741, 1.99, 2.011,
              2.271, 2.3, 2.524, 2.594, 2.855, 3.027, 3.131]
TRUNCATED = ("mp4_cut50", "mp4_cut90", "mkv_cut50", "mkv_cut90", "avi_cut50", "avi_cut90")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_encoders(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Whole and damaged files: 8 s at 25 fps, 64x48 (the issue's 8 s faststart mp4)."""
    d = tmp_path_factory.mktemp("media")
    whole = d / "whole"
    whole.mkdir()
    write_av_video(whole / "fs.mp4", faststart=True)
    write_av_video(whole / "mk.mkv", seed=1)
    write_av_video(whole / "av.avi", audio_codec="ac3", audio_rate=48000, seed=2)
    bad = d / "bad"
    bad.mkdir()
    for name, src in (("mp4", "fs.mp4"), ("mkv", "mk.mkv"), ("avi", "av.avi")):
        for frac in (0.5, 0.9):
            cut_file(whole / src, bad / f"{name}_cut{int(frac * 100)}{Path(src).suffix}", frac)
    audio = d / "audio"
    audio.mkdir()
    write_av_video(d / "speech.mp4", seconds=3.0, seed=3)
    damage_audio_packets(d / "speech.mp4", audio / "one_bad.mp4", count=1)
    damage_audio_packets(d / "speech.mp4", audio / "all_bad.mp4", count=10_000, seed=1)
    write_vfr_video(d / "vfr.mp4", make_frames(len(VFR_STARTS), seed=4), VFR_STARTS)
    return d


def run_cli(video_dir: Path, out: Path, encoders: dict[str, Path], *extra: str, options: tuple = ()) -> int:
    return main(["--video_dir", str(video_dir), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
                 *extra, "--options", *tiny_options(encoders), *options])


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def failures(out: Path) -> dict[str, str]:
    path = out / "failures.jsonl"
    return {r["video_id"]: r["reason"] for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


# ----------------------------------------------------------------------------- cases 4 and 10: truncation


@pytest.mark.parametrize("name", TRUNCATED)
@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_file_is_refused_before_decoding(media, name, backend):
    path = next((media / "bad").glob(f"{name}.*"))
    scan = scan_packets(path)
    assert scan.declared_duration is not None and scan.frames < 200  # the header still declares the whole file
    with pytest.raises(VideoDecodeError, match="truncated or incomplete file") as err:
        VideoSource(path, backend=backend, short_side=32)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["fs.mp4", "mk.mkv", "av.avi"])
def test_whole_files_pass_and_both_backends_agree(media, name):
    """The checks cost nothing on whole files, and decord and PyAV sample the same frames."""
    times = sample_times(8.0, 8.0)
    out = {}
    for backend in ("decord", "pyav"):
        with VideoSource(media / "whole" / name, backend=backend, short_side=32) as src:
            assert src.info.duration == pytest.approx(8.0, abs=0.05) and src.info.note == ""
            out[backend] = src.frames_at(times).astype(np.int16)
    assert out["decord"].shape == out["pyav"].shape == (64, 32, 42, 3)
    assert np.abs(out["decord"] - out["pyav"]).mean() < 2.0


def test_pyav_never_pads_with_its_last_frame(media):
    """With the truncation check relaxed, a cut file gives only what it holds (as decord does), never
    its last frame repeated up to the declared duration (the MKV declared 8 s, PyAV gave 8 s of rows)."""
    path = media / "bad" / "mkv_cut50.mkv"
    for backend in ("decord", "pyav"):
        with VideoSource(path, backend=backend, short_side=32, tolerance=100.0) as src:
            held = src.scan.video_end
            assert held < 6.0 and src.info.duration == pytest.approx(held, abs=0.05)
            frames = src.frames_at(sample_times(src.info.duration, 8.0))
            assert len(frames) == len(sample_times(held, 8.0))
    with VideoSource(path, backend="pyav", short_side=32, tolerance=100.0) as src:
        src._frames.duration = 8.0  # a header trusted as before: asking past the data is a short read
        with pytest.raises(VideoDecodeError, match="short read"):
            src.frames_at(sample_times(8.0, 8.0))


def test_cli_reports_truncated_files_and_extracts_the_rest(media, encoders, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for p in list((media / "bad").iterdir()) + list((media / "whole").iterdir()):
        (videos / p.name).symlink_to(p)
    out = tmp_path / "out"
    assert run_cli(videos, out, encoders, "--modalities", "clip") == 1
    assert "3 done, 0 skipped, 6 failed" in capsys.readouterr().out
    reasons = failures(out)
    assert set(reasons) == set(TRUNCATED)
    assert all("truncated or incomplete file" in r and "decode.truncation_tolerance" in r for r in reasons.values())
    assert sorted(p.name for p in out.glob("*.npz")) == ["av.npz", "fs.npz", "mk.npz"]
    for vid in ("av", "fs", "mk"):
        assert load(out / f"{vid}.npz")["clip"].shape[0] == 8  # 8 s at 1 fps


def test_truncation_tolerance_is_a_config_key(media, encoders, tmp_path, capsys):
    """`decode.truncation_tolerance` (seconds) relaxes the check; the clip is then what the file holds."""
    cfg = tmp_path / "extract.yaml"
    cfg.write_text(DEFAULT_CONFIG.read_text().replace("  truncation_tolerance: 0.25", "  truncation_tolerance: 100"))
    assert "truncation_tolerance: 100" in cfg.read_text()  # the shipped config names the key
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "mkv_cut50.mkv").symlink_to(media / "bad" / "mkv_cut50.mkv")
    out = tmp_path / "out"
    assert run_cli(videos, out, encoders, "--modalities", "clip", "--config", str(cfg)) == 0, capsys.readouterr()
    z = load(out / "mkv_cut50.npz")
    held = scan_packets(media / "bad" / "mkv_cut50.mkv").video_end
    assert z["clip"].shape[0] == len(sample_times(held, 1.0)) < 8
    assert float(z["meta_duration"]) == pytest.approx(held, abs=0.05)
    assert run_cli(videos, out, encoders, "--config", str(cfg), options=("decode.truncation_tolerance=-1",)) == 2
    assert "decode.truncation_tolerance" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cases 9 and 12: timestamps


def test_decord_timestamps_are_checked_against_the_container(media):
    scan = scan_packets(media / "vfr.mp4")
    good = scan.starts.copy()
    check_timestamps("vfr.mp4", good, scan)  # decord's own timeline of this file passes (below, too)
    broken = good.copy()
    broken[3:15] = -3e17  # Megamind_bugy.avi: 189 of 270 timestamps were -3e17
    with pytest.raises(VideoDecodeError, match="go backwards|outside the stream"):
        check_timestamps("x.avi", broken, scan)
    with pytest.raises(VideoDecodeError, match="not finite"):
        check_timestamps("x.avi", np.where(np.arange(len(good)) == 4, np.nan, good), scan)
    late = good + 0.125  # no_face.mp4: every sampled frame 3 frames late
    with pytest.raises(VideoDecodeError, match="more than one frame"):
        check_timestamps("x.mp4", late, scan)
    with pytest.raises(VideoDecodeError, match="counts"):
        check_timestamps("x.mp4", good[:-5], scan)


def test_decord_disagreeing_with_pyav_falls_back_and_is_flagged(media, monkeypatch):
    from minigpt4.extraction import video_io

    with VideoSource(media / "vfr.mp4", backend="auto", short_side=32) as src:
        assert src.info.backend == "decord" and src.info.note == ""
    real_init = video_io._DecordFrames.__init__

    def late_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.starts = self.starts + 0.125

    monkeypatch.setattr(video_io._DecordFrames, "__init__", late_init)
    with VideoSource(media / "vfr.mp4", backend="auto", short_side=32) as src:
        assert src.info.backend == "pyav" and "disagree with the container's" in src.info.note
        marker = src.frames_at(sample_times(src.info.duration, 8.0))[:, 1:3, 1:3].mean(axis=(1, 2, 3))
    expected = np.searchsorted(VFR_STARTS, sample_times(3.132, 8.0) + 1e-6, side="right") - 1
    np.testing.assert_allclose(marker, np.minimum(8 * expected, 255), atol=6)  # PyAV's frames are the right ones
    with pytest.raises(VideoDecodeError, match="more than one frame"):
        VideoSource(media / "vfr.mp4", backend="decord", short_side=32)


# ----------------------------------------------------------------------------- case 11: damaged audio


def test_damaged_audio_packets_are_skipped_not_fatal(media, encoders, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(media / "audio", out, encoders, "--modalities", "clip", "hubert", "transcript") == 0, \
        capsys.readouterr()
    one = load(out / "one_bad.npz")  # the first AAC packet damaged: the rest of the track is kept
    assert one["clip"].shape[0] == 3 and one["hubert"].shape[0] == 30 and str(one["meta_audio"]) == "present"
    assert str(one["meta_audio_note"]).startswith("1 of ") and "meta_absent" not in one
    bad = load(out / "all_bad.npz")  # nothing decodes: the audio modalities go, the frames stay
    assert bad["clip"].shape[0] == 3 and "hubert" not in bad and "transcript" not in bad
    assert str(bad["meta_audio"]) == "undecodable"
    assert "hubert: audio undecodable" in str(bad["meta_absent"]) and "transcript: audio undecodable" in str(bad["meta_absent"])


def test_damaged_first_packet_keeps_the_track_aligned(media):
    from minigpt4.extraction.video_io import read_audio

    whole, damaged = read_audio(media / "speech.mp4"), read_audio(media / "audio" / "one_bad.mp4")
    assert len(damaged) == pytest.approx(len(whole), abs=1100)  # one AAC frame (1024 samples) at most
    tail = slice(16000, 40000)  # after the damaged packet the samples are the same, at the same times
    np.testing.assert_allclose(damaged[tail], whole[tail], atol=1e-4)


# ----------------------------------------------------------------------------- cases 13 and 8: reruns


def test_rerun_reextracts_on_changed_settings_or_damage_and_cleans_temps(media, encoders, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("fs.mp4", "mk.mkv"):
        (videos / name).symlink_to(media / "whole" / name)
    out = tmp_path / "out"
    assert run_cli(videos, out, encoders, "--modalities", "clip") == 0
    first = load(out / "fs.npz")
    assert json.loads(str(first["meta_settings"]))["clip"]["fps"] == "1.0"
    assert str(first["meta_checksum"]).startswith("sha256:")
    capsys.readouterr()
    # the same settings: skipped
    assert run_cli(videos, out, encoders, "--modalities", "clip") == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out
    # another visual.fps: extracted again, and said so
    assert run_cli(videos, out, encoders, "--modalities", "clip", options=("visual.fps=2",)) == 0
    text = capsys.readouterr().out
    assert "2 done, 0 skipped" in text and "clip.fps: 1.0 -> 2.0" in text
    assert load(out / "fs.npz")["clip"].shape[0] == 16
    assert run_cli(videos, out, encoders, "--modalities", "clip", options=("visual.fps=2.0",)) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out  # 2 and 2.0 are the same setting
    # a damaged file (a flipped byte in the clip array: CRC and checksum) is extracted again
    raw = bytearray((out / "mk.npz").read_bytes())
    at = raw.index(b"clip.npy") + 200
    raw[at] ^= 0xFF
    (out / "mk.npz").write_bytes(bytes(raw))
    # temp files a kill -9 left: ours for this run's videos go; another shard's and foreign files stay
    stale = out / ".fs.npz.k3j_x9q2.tmp"
    stale.write_bytes(b"PK partial")
    others = [out / ".zz.npz.abcdefgh.tmp", out / "notes.tmp", out / ".fs.npz.tmp"]
    for p in others:
        p.write_bytes(b"x")
    assert run_cli(videos, out, encoders, "--modalities", "clip", options=("visual.fps=2",)) == 0
    text = capsys.readouterr().out
    assert "1 done, 1 skipped" in text and "mk: unreadable" in text and "removed 1 temp file" in text
    assert not stale.exists() and all(p.exists() for p in others)
    assert load(out / "mk.npz")["clip"].shape[0] == 16


def test_files_from_before_meta_settings_are_judged_by_their_old_meta(tmp_path):
    from minigpt4.datasets.feature_io import write_features
    from minigpt4.extraction.rerun import reason_to_redo

    path = tmp_path / "old.npz"
    write_features(path, {"clip": np.ones((3, 4))}, meta={"modalities": "clip,hubert", "clip_model": "m", "clip_fps": "1.0"})
    same = {"clip": {"path": "m", "fps": "1.0", "output": "pooled"}}
    assert reason_to_redo(path, ("clip",), same) is None  # nothing recorded contradicts this run
    assert reason_to_redo(path, ("clip",), {"clip": {**same["clip"], "fps": "2.0"}}) == "clip.fps: 1.0 -> 2.0"
    assert reason_to_redo(path, ("clip", "au"), same).startswith("made for clip,hubert")
    assert reason_to_redo(tmp_path / "none.npz", ("clip",), same) == "missing"
