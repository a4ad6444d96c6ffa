"""The cue probe (minigpt4/evaluation/cue_probe.py): which latents fields it reads, the frames'
pooled statistics, and that its R^2 tells a summary that carries a cue from one that does not."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minigpt4.common.modalities import EXPERT_ORDER
from minigpt4.evaluation.cue_probe import CueProbeError, cue_fields, format_table, frame_statistics, probe_cues, read_latents


def _records(n: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"video_id": f"c{i}", "split": "train" if i < n * 3 // 4 else "test", "emotion": "happy",
                    "present": {"audio": i % 5 != 0, "motion": True}, "audio_tone": float(rng.normal()),
                    "motion_gesture": float(rng.normal()), "face_intensity": float(rng.uniform()),
                    "still_body": False, "face_category": "happy", "speaker_loudness": 0.3})
    return out


def test_cue_fields_are_the_numeric_fields_named_by_a_modality():
    recs = _records(4, np.random.default_rng(0))
    assert cue_fields(recs) == {"audio_tone": "audio", "motion_gesture": "motion", "face_intensity": "au"}
    recs[2]["audio_tone"] = None  # a field one record lacks a number for is not a cue
    assert "audio_tone" not in cue_fields(recs)


def test_frame_statistics_are_mean_std_and_the_slope_over_time():
    t = np.linspace(-1.0, 1.0, 9)
    frames = np.stack([2.0 + 0 * t, 3.0 * t], axis=1)  # a constant, a rising ramp
    stats = frame_statistics(frames)
    np.testing.assert_allclose(stats[:2], [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats[2:4], [0.0, frames[:, 1].std()])
    np.testing.assert_allclose(stats[4:], [0.0, 3.0 * np.mean(t * t)])
    assert frame_statistics(-frames)[5] < 0  # falling: negative slope
    assert frame_statistics(frames[:1]).shape == (6,)


def test_probe_reads_a_cue_the_summary_carries_and_not_one_it_lacks():
    rng = np.random.default_rng(0)
    recs = _records(200, rng)
    audio, motion = EXPERT_ORDER.index("audio"), EXPERT_ORDER.index("motion")
    summaries = {}
    for r in recs:
        summ = rng.normal(size=(6, 16))
        summ[audio, 3] = r["audio_tone"] + 0.05 * rng.normal()  # the audio expert carries its cue
        present = np.array([name in ("audio", "motion") and r["present"].get(name, False) for name in EXPERT_ORDER])
        summaries[r["video_id"]] = (summ, present, 2)

    def frames(vid: str, modality: str):  # the tone as the direction of a ramp in the frames
        r = next(x for x in recs if x["video_id"] == vid)
        return np.linspace(-1.0, 1.0, 12)[:, None] * r["audio_tone"] + 0.1 * rng.normal(size=(12, 3))

    out = probe_cues(recs, summaries, "train", "test", frames)
    assert out["audio_tone"]["modality"] == "audio"
    n_audio_test = sum(r["split"] == "test" and r["present"]["audio"] for r in recs)
    assert out["audio_tone"]["n_test"] == n_audio_test < 50  # clips without a voice are left out
    assert out["audio_tone"]["expert_r2"] > 0.95 and out["audio_tone"]["frames_r2"] > 0.9
    assert out["motion_gesture"]["expert_r2"] < 0.2  # the motion summaries are noise
    assert out["face_intensity"]["expert_r2"] is None and out["face_intensity"]["n_train"] == 0  # no AU expert present
    table = format_table(out)
    assert table.splitlines()[0].startswith("cue") and "audio_tone" in table and "   -" in table
    with pytest.raises(CueProbeError, match="no numeric cue"):
        probe_cues([{k: v for k, v in r.items() if k in ("video_id", "split", "present")} for r in recs],
                   summaries, "train", "test")


def test_read_latents_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "latents.json"
    path.write_text(json.dumps([{"video_id": "a", "split": "train"}]))
    with pytest.raises(CueProbeError, match=r"latents.json: record 0 lacks"):
        read_latents(path)
    with pytest.raises(CueProbeError, match="cannot read it"):
        read_latents(tmp_path / "missing.json")
