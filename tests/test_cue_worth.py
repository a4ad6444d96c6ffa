"""Pricing an expert's reading with the generator oracle (minigpt4/evaluation/cue_worth.py), and the
oracles' cue blocks it replaces (CUE_BLOCKS in demo_oracles / shift_oracles)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minigpt4.common.modalities import STACK_ORDER
from minigpt4.evaluation.cue_worth import format_worth_table, modality_worth, read_block
from minigpt4.synthetic import demo_cues, demo_oracles, shift_cues, shift_oracles


@pytest.mark.parametrize("cues_mod, oracles", [(demo_cues, demo_oracles), (shift_cues, shift_oracles)])
def test_cue_blocks_tile_the_cue_vector_and_hold_only_their_modality(cues_mod, oracles):
    """The blocks follow the five presence flags back to back to the vector's end, one per modality,
    and a clip without a modality has zeros in exactly that modality's block."""
    blocks = oracles.CUE_BLOCKS
    assert set(blocks) == set(STACK_ORDER)
    spans = sorted((b.start, b.stop) for b in blocks.values())
    assert spans[0][0] == len(STACK_ORDER)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    rng = np.random.default_rng(3)
    clip = cues_mod.sample_cues(rng, "angry", "c0", "train")
    clip = dataclasses.replace(clip, present={m: True for m in STACK_ORDER})
    assert spans[-1][1] == len(oracles.cue_vector(clip))
    for m, cols in blocks.items():
        without = oracles.cue_vector(dataclasses.replace(clip, present={**clip.present, m: False}))
        assert not without[cols].any()
        other = np.ones(len(without), bool)
        other[cols] = False
        other[: len(STACK_ORDER)] = False
        assert np.array_equal(without[other], oracles.cue_vector(clip)[other])


def _planted(n: int, rng: np.random.Generator):
    """Labels read off two cue blocks ("audio" decisive, "text" a weaker help); the audio expert's
    summary is its block rotated into 16 dims, the text expert's summary is noise."""
    blocks = {"audio": slice(0, 2), "text": slice(2, 4)}
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] > 0).astype(int) * 2 + (x[:, 2] + 0.5 * x[:, 1] > 0).astype(int)
    rot = rng.normal(size=(2, 16))
    summaries = {"audio": x[:, :2] @ rot, "text": rng.normal(size=(n, 16))}
    return blocks, x, y, summaries


def test_an_expert_that_carries_its_block_costs_nothing_and_one_that_carries_noise_costs_the_block():
    rng = np.random.default_rng(0)
    blocks, x, y, summ = _planted(600, rng)
    split = {"train": slice(0, 400), "test": slice(400, 600)}
    cues = {s: x[i] for s, i in split.items()}
    labels = {s: y[i] for s, i in split.items()}
    summaries = {s: {m: v[i] for m, v in summ.items()} for s, i in split.items()}
    present = {s: {m: np.ones(i.stop - i.start, bool) for m in blocks} for s, i in split.items()}
    out = modality_worth(cues, labels, summaries, present, blocks)
    assert out["noise_free"] > 0.9
    assert out["audio_left_out"] < out["noise_free"] - 0.3  # the decisive block
    assert out["audio_from_expert"] == pytest.approx(out["noise_free"], abs=0.02)  # read exactly
    assert out["text_from_expert"] < out["noise_free"] - 0.1  # the noise expert loses what text gave
    assert out["text_from_expert"] <= out["text_left_out"] + 0.03
    assert out["all_from_experts"] == pytest.approx(out["text_from_expert"], abs=0.03)
    table = format_worth_table(out, blocks)
    assert f"{out['noise_free']:.3f}" in table and "+0.0" in table.splitlines()[2]


def test_absent_clips_keep_zeros_and_a_modality_without_train_clips_is_not_priced():
    rng = np.random.default_rng(1)
    blocks, x, y, summ = _planted(300, rng)
    split = {"train": slice(0, 200), "test": slice(200, 300)}
    present = {s: {"audio": np.ones(i.stop - i.start, bool), "text": np.zeros(i.stop - i.start, bool)}
               for s, i in split.items()}
    cues = {s: x[i].copy() for s, i in split.items()}
    for s in cues:
        cues[s][:, blocks["text"]] = 0.0  # absent: the cue vector already holds zeros
    out = modality_worth(cues, {s: y[i] for s, i in split.items()},
                         {s: {m: v[i] for m, v in summ.items()} for s, i in split.items()}, present, blocks)
    assert out["text_from_expert"] is None
    assert out["text_left_out"] == pytest.approx(out["noise_free"])
    assert "    -" in format_worth_table(out, blocks)


def test_read_block_cross_fits_the_train_predictions():
    """A read-out of pure noise predicts the train clips no better than the test clips: each train
    prediction comes from a ridge that did not see that clip."""
    rng = np.random.default_rng(2)
    s_train, s_test = rng.normal(size=(200, 30)), rng.normal(size=(50, 30))
    block = rng.normal(size=(200, 1))
    train_pred, test_pred = read_block(s_train, block, s_test)
    assert train_pred.shape == (200, 1) and test_pred.shape == (50, 1)
    assert np.corrcoef(train_pred[:, 0], block[:, 0])[0, 1] < 0.2  # an in-sample fit would reach ~0.35
