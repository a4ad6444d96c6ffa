"""Sentences worded from measured signals (minigpt4/datasets/measured_evidence.py) on constructed arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minigpt4.datasets import measured_evidence as me

PROSODY_COLUMNS = ["f0_hz", "voiced_prob", "rms_dbfs", "speech"]


def au_track(seconds: int, fps: float = 1.0, **curves: np.ndarray) -> np.ndarray:
    """`[T, 35]` zeros with intensity curves for named AUs, e.g. AU12=[...]."""
    au = np.zeros((int(seconds * fps), 35), np.float32)
    for name, curve in curves.items():
        au[:, me.AU_INTENSITY_NUMBERS.index(int(name[2:]))] = curve
    return au


def test_au_numbers_are_the_extractors_openface_layout():
    from minigpt4.extraction.action_units import AU_INTENSITY_COLUMNS

    assert [f"AU{n:02d}_r" for n in me.AU_INTENSITY_NUMBERS] == list(AU_INTENSITY_COLUMNS)
    assert set(me.FACS_NAMES) == set(me.AU_INTENSITY_NUMBERS)


def test_au_sentence_names_the_two_strongest_actions_with_their_timing():
    fps = 2.0  # rows every 0.5 s
    smile = np.array([0, 0, 0.6, 1.4, 2.4, 1.8, 1.3, 0.4, 0, 0], np.float32)  # apex row 4 = 2.0 s
    cheek = np.array([0, 0, 0, 1.1, 1.5, 1.2, 0, 0, 0, 0], np.float32)
    brow = np.full(10, 0.8, np.float32)  # below AU_MIN_PEAK: a trace, not worded
    blink = np.array([0, 4.5, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)  # strong but ignored
    au = au_track(5, fps, AU12=smile, AU06=cheek, AU04=brow, AU45=blink)
    text = me.au_sentence(au, fps)
    # AU12 runs while >= half its peak (1.2): rows 3-6 = 1.5 s .. 3.0 s
    assert text == ("AU12 lip corner puller (peak 2.4 of 5) from 1.5 s, apex 2.0 s, for 2.0 s; "
                    "AU06 cheek raiser (peak 1.5 of 5) from 1.5 s, apex 2.0 s, for 1.5 s")


def test_au_sentence_uses_the_recorded_windows_of_each_row():
    au = au_track(3, 1.0, AU15=np.array([0, 2.0, 2.2], np.float32))
    # rows are windows 0, 4, 5 (windows 1-3 had no usable face)
    assert me.au_sentence(au, 1.0, windows=np.array([0, 4, 5])) == (
        "AU15 lip corner depressor (peak 2.2 of 5) from 4.0 s, apex 5.0 s, for 2.0 s")
    assert me.parse_index_ranges("0,4-5").tolist() == [0, 4, 5] and me.parse_index_ranges("").size == 0


def test_au_sentence_is_none_when_nothing_was_measured_or_reached_the_threshold():
    assert me.au_sentence(np.zeros((0, 35)), 1.0) is None
    assert me.au_sentence(au_track(4, AU01=np.full(4, 0.5)), 1.0) is None
    assert me.au_sentence(np.ones((4, 5)), 1.0) is None  # not the OpenFace layout


def prosody_track(f0: np.ndarray, db: np.ndarray, speech: np.ndarray) -> np.ndarray:
    return np.stack([f0, (f0 > 0).astype(np.float32) * 0.9, db, speech], axis=1).astype(np.float32)


def test_voice_sentence_words_pitch_loudness_and_pauses():
    n = 50
    f0 = np.geomspace(150, 300, n).astype(np.float32)  # an octave from end to end
    speech = np.ones(n, np.float32)
    speech[[10, 20, 30, 40]] = 0  # 4 pauses in 50 windows
    f0[speech == 0] = 0
    text = me.voice_sentence(prosody_track(f0, np.full(n, -12.0), speech), PROSODY_COLUMNS, 10.0)
    voiced = f0[f0 > 0]
    lo, hi = np.percentile(voiced, [10, 90])
    assert 12 * np.log2(hi / lo) > me.RANGE_WIDE_ST
    assert text == (f"medium, widely varying pitch (median {np.median(voiced):.0f} Hz, range "
                    f"{12 * np.log2(hi / lo):.0f} semitones), loud (-12 dBFS), few pauses (8%)")


def test_voice_sentence_low_flat_quiet_and_pausing():
    f0 = np.array([100, 101, 0, 0, 0, 0, 102, 100, 0, 0], np.float32)
    speech = (f0 > 0).astype(np.float32)
    text = me.voice_sentence(prosody_track(f0, np.full(10, -40.0), speech), PROSODY_COLUMNS, 10.0)
    assert text.startswith("low, flat pitch (median 100 Hz") and "quiet (-40 dBFS)" in text
    assert text.endswith("many pauses (50%)")


def test_voice_sentence_is_none_without_voicing_or_columns():
    silent = prosody_track(np.zeros(20, np.float32), np.full(20, -100.0), np.zeros(20, np.float32))
    assert me.voice_sentence(silent, PROSODY_COLUMNS, 10.0) is None
    assert me.voice_sentence(silent, ["a", "b", "c", "d"], 10.0) is None
    assert me.voice_sentence(np.zeros((0, 4)), PROSODY_COLUMNS, 10.0) is None


def test_motion_sentence_still_with_a_burst_and_restless():
    speed = np.full(32, 0.002, np.float32)
    speed[16:24] = 0.09  # steps 2.0 .. 3.0 s at 8 fps
    speed[19] = 0.1
    flow = np.stack([speed, speed * 2], axis=1)
    text = me.motion_sentence(flow, ["mean_speed", "p90_speed"], 8.0)
    assert text.startswith("moving a little (mean 0.024")
    assert text.endswith("a burst of movement from 2.0 s to 3.0 s, peak at 2.4 s")
    still = me.motion_sentence(np.full((10, 2), 0.001, np.float32), ["mean_speed", "p90_speed"], 8.0)
    assert still == "still (mean 0.001 frame diagonals/s)"
    busy = np.full((10, 2), 0.08, np.float32)
    busy[3] = 0.1
    assert me.motion_sentence(busy, ["mean_speed", "p90_speed"], 8.0) == (
        "restless (mean 0.082 frame diagonals/s), most movement at 0.4 s")
    assert me.motion_sentence(np.zeros((0, 2)), ["mean_speed", "p90_speed"], 8.0) is None
    assert me.motion_sentence(busy, ["x", "y"], 8.0) is None


def test_words_and_scene_sentences():
    assert me.words_sentence("  I am   so happy ") == 'says "I am so happy"'
    assert me.words_sentence("") is None and me.words_sentence(None) is None
    long = me.words_sentence("word " * 100)
    assert long.endswith(' ..."') and len(long) <= me.WORDS_MAX_CHARS + 12
    labels = ["a person in an office", "a person outdoors", "a crowded party"]
    assert me.scene_sentence(np.array([[0.1, 0.62, 0.28]]), labels) == (
        "looks like a person outdoors (0.62) or a crowded party (0.28)")
    assert me.scene_sentence(np.array([[0.05, 0.9, 0.05]]), labels) == "looks like a person outdoors (0.90)"
    assert me.scene_sentence(np.full(3, 1 / 3), labels) is None  # no better than chance
    assert me.scene_sentence(np.full(8, 1 / 8), [str(i) for i in range(8)]) is None  # nothing stands out
    assert me.scene_sentence(np.array([0.5, 0.5]), labels) is None  # labels do not match


def test_measured_sentences_maps_files_to_expert_names():
    from minigpt4.common.modalities import EXPERT_ORDER

    speed = np.full((16, 2), 0.05, np.float32)
    f0 = np.full(20, 150.0, np.float32)
    arrays = {
        "flow": speed.astype(np.float16),  # HERODataset hands over the stored dtype
        "prosody": prosody_track(f0, np.full(20, -25.0), np.ones(20, np.float32)).astype(np.float16),
        "au": au_track(4, 1.0, AU12=np.array([0, 3.0, 3.0, 0], np.float32)),
        "scene": np.array([[0.7, 0.2, 0.1]], np.float16),
        "clip": np.zeros((4, 8), np.float16),
    }
    meta = {"flow_columns": "mean_speed,p90_speed", "flow_fps": "8", "prosody_columns": ",".join(PROSODY_COLUMNS),
            "prosody_fps": "10", "scene_labels": json.dumps(["an office", "outdoors", "a party"]),
            "settings": json.dumps({"au": {"fps": "2.0"}})}
    out = me.measured_sentences(arrays, meta, "hello there", au_fps_default=1.0)
    assert set(out) == {"motion", "audio", "au", "text", "visual"} and set(out) < set(EXPERT_ORDER)
    assert out["text"] == 'says "hello there"' and out["visual"].startswith("looks like an office (0.70)")
    assert out["au"].startswith("AU12 lip corner puller (peak 3.0 of 5) from 0.5 s")  # au fps 2 from meta_settings
    assert out["audio"].startswith("medium, flat pitch (median 150 Hz") and out["motion"].startswith("restless")
    meta["au_fps"] = "1"
    assert me.measured_sentences(arrays, meta, "", 1.0)["au"].startswith("AU12 lip corner puller (peak 3.0 of 5) from 1.0 s")
    assert "text" not in me.measured_sentences(arrays, meta, "", 1.0)
    meta["au_windows"] = "0-1"  # does not match the 4 rows: their times are unknown, nothing is worded
    assert "au" not in me.measured_sentences(arrays, meta, "", 1.0)
    assert me.measured_sentences({}, {}, "", 1.0) == {}
    no_meta = me.measured_sentences({"flow": speed, "prosody": arrays["prosody"]}, {}, "", 1.0)
    assert no_meta == {}  # columns and rates unknown: nothing is guessed


@pytest.mark.parametrize("bad", ["x", "1-x", "a-b"])
def test_bad_au_windows_record_words_no_au(bad):
    arrays = {"au": au_track(2, 1.0, AU12=np.array([2.0, 2.0], np.float32))}
    assert "au" not in me.measured_sentences(arrays, {"au_windows": bad}, "", 1.0)
