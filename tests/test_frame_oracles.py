"""The frame oracles (demo and shift corpus): exact reads of noise-free renderings, close reads of
the corpora's files, C chosen on the validation split, errors that name the clip. Where each oracle
sits against its corpus's baselines and cue oracle: the default-size tests in test_demo_data and
test_shift_data."""
from __future__ import annotations

import numpy as np
import pytest

from minigpt4.common.modalities import DEFAULT_FEATURE_KEYS, STACK_ORDER
from minigpt4.datasets.feature_io import find_feature_file, read_features
from minigpt4.synthetic import demo as dd
from minigpt4.synthetic import demo_cues as dc
from minigpt4.synthetic import demo_frame_oracle as dfo
from minigpt4.synthetic import demo_oracles as dor
from minigpt4.synthetic import frame_oracle as fo
from minigpt4.synthetic import shift as sd
from minigpt4.synthetic import shift_cues as scu
from minigpt4.synthetic import shift_frame_oracle as sfo
from minigpt4.synthetic.common import AU_ORDER, add_expression

SMALL = (60, 12, 12)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> sd.ShiftSummary:
    return sd.generate_shift(tmp_path_factory.mktemp("shift_oracle") / "data", num_clips=SMALL, seed=5)


@pytest.fixture(scope="module")
def enc() -> sd.ShiftEncoders:
    return sd.make_encoders()


def test_shift_noise_free_audio_is_read_exactly(enc):
    """A rendering without noise (a speaker level on every frame, energy and a pitch ramp in two
    segments) gives back the energy and tone it was made with."""
    u_energy, u_pitch = enc.directions["audio"]
    t, segments, energy, tone = 20, [(2, 4), (10, 6)], 0.7, -0.4
    x = np.tile(0.3 * u_energy + enc.topics[1], (t, 1))
    for start, k in segments:
        x[start : start + k] += sd.AUDIO_ENERGY_GAIN * energy * u_energy
        x[start : start + k] += sd.AUDIO_PITCH_GAIN * tone * sd.pitch_ramp(k)[:, None] * u_pitch
    assert sfo.read_audio(x, segments, enc) == pytest.approx([energy, tone], abs=1e-9)


def test_shift_noise_free_motion_and_au_are_read_exactly(enc):
    u_gx, u_gy, u_posture = enc.directions["motion"]
    t, segments, posture = 12, [(3, 6)], -0.5
    x = np.zeros((t, sd.SHIFT_DIMS["motion"]))
    x[3:9] += sd.MOTION_POSTURE_GAIN * posture * u_posture
    _, motion_posture = sfo.read_motion(x, segments, enc)
    assert motion_posture == pytest.approx(posture, abs=1e-9)
    # a circle of radius 0.8 x gain in the gesture plane; the read removes the noise's expected power
    phase = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    x[3:9] += sd.MOTION_GESTURE_GAIN * 0.8 * (np.cos(phase)[:, None] * u_gx + np.sin(phase)[:, None] * u_gy)
    gesture, _ = sfo.read_motion(x, segments, enc)
    expected = np.sqrt(max(0.8**2 * sd.MOTION_GESTURE_GAIN**2 - 2 * sd.FRAME_NOISE**2, 0.0)) / sd.MOTION_GESTURE_GAIN
    assert gesture == pytest.approx(expected, abs=1e-9)

    inten = np.full((10, len(AU_ORDER)), 0.4)
    apex = {"AU12": 3.0, "AU06": 1.5}
    add_expression(inten, 2, 5, apex)
    read = fo.au_apex(np.concatenate([inten, np.zeros((10, 18))], axis=1), [(2, 5)])
    want = np.zeros(len(AU_ORDER))
    for au, peak in apex.items():
        want[AU_ORDER.index(au)] = peak
    np.testing.assert_allclose(read, want, atol=1e-9)


def test_shift_reads_of_the_corpus_files_follow_the_rendered_cues(small, enc):
    """On real renderings (frame noise, speaker, scene, topic): each read tracks the noise-free
    value it estimates, and an absent modality reads as zeros."""
    clips = scu.load_latents(small.latents)
    rows, truth = [], []
    for c in clips:
        arrays = read_features(find_feature_file(small.features_dir, c.video_id)).arrays
        v = sfo.read_cue_vector(c, arrays, enc)
        assert v.shape == (len(STACK_ORDER) + sum(sfo.READ_BLOCKS.values()),)
        assert list(v[: len(STACK_ORDER)]) == [float(DEFAULT_FEATURE_KEYS[m] in arrays) for m in STACK_ORDER]
        rows.append(v)
        truth.append(c)
    x = np.stack(rows)
    offset = {}
    at = len(STACK_ORDER)
    for m, width in sfo.READ_BLOCKS.items():
        offset[m] = at
        at += width
    for i, c in enumerate(truth):
        for m, width in sfo.READ_BLOCKS.items():
            if not c.present[m]:
                assert not x[i, offset[m] : offset[m] + width].any(), (c.video_id, m)

    def corr(modality: str, column: int, value) -> float:
        idx = [i for i, c in enumerate(truth) if c.present[modality]]
        return float(np.corrcoef(x[idx, offset[modality] + column], [value(truth[i]) for i in idx])[0, 1])

    assert corr("audio", 0, lambda c: c.audio_energy) > 0.9
    assert corr("audio", 1, lambda c: c.audio_tone) > 0.6
    assert corr("motion", 0, lambda c: c.motion_gesture) > 0.7
    assert corr("motion", 1, lambda c: c.motion_posture) > 0.8
    assert corr("visual", 0, lambda c: c.visual_valence) > 0.8
    assert corr("au", AU_ORDER.index("AU12"), lambda c: c.au_apex().get("AU12", 0.0)) > 0.9


def test_shift_frame_oracle_picks_c_on_val_and_refuses_bad_splits(small):
    out = sfo.frame_oracle(small.features_dir, small.latents)
    assert out["param"] in sfo.C_GRID and 0.0 <= out["val_accuracy"] <= 1.0
    assert 0.0 <= out["accuracy"] <= 1.0
    assert sfo.frame_oracle_accuracy(small.features_dir, small.latents) == out["accuracy"]
    with pytest.raises(ValueError, match="no clips in split 'dev'"):
        sfo.frame_oracle(small.features_dir, small.latents, val_split="dev")
    with pytest.raises(ValueError, match="grid is empty"):
        sfo.frame_oracle(small.features_dir, small.latents, c_grid=())


def test_a_missing_feature_file_is_an_error_naming_the_clip(small, tmp_path):
    import shutil

    feats = tmp_path / "features"
    shutil.copytree(small.features_dir, feats)
    victim = next(c for c in scu.load_latents(small.latents) if c.split == "val")
    find_feature_file(feats, victim.video_id).unlink()
    with pytest.raises(FileNotFoundError, match=victim.video_id):
        sfo.read_split_cues(feats, small.latents, "val")


def test_the_best_of_a_grid_on_val_is_kept_and_ties_keep_the_first():
    """fit_and_score on a planted problem: the parameter that fits is chosen; a tie keeps the first."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    y = (x[:, 0] > 0).astype(int)
    parts = ((x[:100], y[:100]), (x[100:150], y[100:150]), (x[150:], y[150:]))
    make = lambda p: LogisticRegression() if p == 2.0 else DummyClassifier(strategy="most_frequent")  # noqa: E731
    out = fo.fit_and_score(make, (1.0, 2.0, 3.0), *parts)
    assert out["param"] == 2.0 and out["accuracy"] >= 0.9 and out["val_accuracy"] >= 0.9
    tie = fo.fit_and_score(lambda p: DummyClassifier(strategy="most_frequent"), (5.0, 1.0), *parts)
    assert tie["param"] == 5.0


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> dd.DemoSummary:
    return dd.generate_demo(tmp_path_factory.mktemp("demo_oracle") / "data", num_clips=(60, 12, 24), seed=5)


def test_demo_reads_keep_the_cue_vector_layout_and_follow_the_cues(small_demo):
    """Every block of the demo's cue vector read from the files: presence flags exact, absent
    blocks zero, the words' polarity mostly right, AU apexes and the other cues close to the latents'."""
    enc = dd.make_encoders()
    truth, reads = [], []
    for c in dc.load_latents(small_demo.latents):
        arrays = read_features(find_feature_file(small_demo.features_dir, c.video_id)).arrays
        truth.append(dor.cue_vector(c))
        reads.append(dfo.read_cue_vector(c, arrays, enc))
    truth, reads = np.stack(truth), np.stack(reads)
    assert truth.shape == reads.shape
    np.testing.assert_array_equal(reads[:, :5], truth[:, :5])
    for m, block in dor.CUE_BLOCKS.items():
        absent = truth[:, STACK_ORDER.index(m)] == 0
        assert not reads[absent, block].any(), m
    text = truth[:, STACK_ORDER.index("text")] == 1
    words = dor.CUE_BLOCKS["text"]
    assert (reads[text, words].argmax(1) == truth[text, words].argmax(1)).mean() >= 0.8
    assert np.allclose(reads[text, words].sum(1), 1.0)
    au = truth[:, STACK_ORDER.index("au")] == 1
    block = dor.CUE_BLOCKS["au"]
    assert np.corrcoef(reads[au, block].ravel(), truth[au, block].ravel())[0, 1] > 0.9
    for m in ("audio", "visual"):
        on = truth[:, STACK_ORDER.index(m)] == 1
        col = dor.CUE_BLOCKS[m].start
        assert np.corrcoef(reads[on, col], truth[on, col])[0, 1] > 0.8, m


def test_demo_frame_oracle_scores_its_classifier_and_names_a_mismatched_file(small_demo, tmp_path):
    out = dfo.frame_oracle(small_demo.features_dir, small_demo.latents)
    assert 0.0 <= out["accuracy"] <= 1.0 and out["param"] == 0.0
    assert dfo.frame_oracle_accuracy(small_demo.features_dir, small_demo.latents) == out["accuracy"]
    clip = next(c for c in dc.load_latents(small_demo.latents) if c.present["audio"])
    arrays = dict(read_features(find_feature_file(small_demo.features_dir, clip.video_id)).arrays)
    del arrays[DEFAULT_FEATURE_KEYS["audio"]]
    with pytest.raises(ValueError, match=clip.video_id):
        dfo.read_cue_vector(clip, arrays)


def test_cue_probe_prices_against_the_frame_reads(small_demo):
    """`cue_probe --worth --frame`'s pricing: with the demo frame oracle's reads as the cues, an expert
    whose summary carries its modality's read block costs nothing (within one clip or two)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scripts import cue_probe
    from minigpt4.common.modalities import EXPERT_ORDER

    data = small_demo.out_dir
    read = cue_probe.frame_reader(data)
    clips = dc.load_latents(small_demo.latents)
    hidden = 24
    summaries = {}
    for c in clips:
        v = read(c)
        summ = np.zeros((len(EXPERT_ORDER), hidden))
        for m, block in dor.CUE_BLOCKS.items():
            summ[EXPERT_ORDER.index(m), : block.stop - block.start] = v[block]
        present = np.array([bool(c.present.get(m, False)) for m in EXPERT_ORDER])
        summaries[c.video_id] = (summ, present)
    records = json.loads(small_demo.latents.read_text())
    oracle = (dc.ClipCues.from_json, dor.cue_vector, dor.CUE_BLOCKS)
    worth = cue_probe.price_readings(small_demo.latents, records, oracle, summaries, "test", read)
    for m in dor.CUE_BLOCKS:
        assert worth[f"{m}_from_expert"] == pytest.approx(worth["noise_free"], abs=2 / 24 + 1e-9), (m, worth)
    # its first number is the oracle's classifier on the frame reads themselves
    from minigpt4.evaluation.cue_worth import oracle_accuracy

    split = {s: [c for c in clips if c.split == s] for s in ("train", "test")}
    x = {s: np.stack([read(c) for c in cs]) for s, cs in split.items()}
    y = {s: np.array([c.emotion for c in cs]) for s, cs in split.items()}
    assert worth["noise_free"] == oracle_accuracy(x["train"], y["train"], x["test"], y["test"])
