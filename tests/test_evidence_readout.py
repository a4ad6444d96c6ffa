"""decoding: readout: each expert's sentence is the bank sentence a linear read-out of its summary ranks first."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minigpt4.common.modalities import AUDIO, VISUAL
from minigpt4.models.hero.evidence_bank import EvidenceBank
from minigpt4.models.hero.evidence_readout import SLOTS_KEY, EvidenceReadout, with_slots
from minigpt4.models.hero.evidence_stack import EvidenceTargets
from tests.test_evidence_stack import _batch, _stack

pytestmark = pytest.mark.usefixtures("one_thread")

AUDIO_SENTENCES = ([5, 6, 7], [8, 9], [10, 11, 12, 13])  # three recorded audio sentences (slots 0, 1, 2)


def _targets(ids: list[list[list[int]]]) -> EvidenceTargets:
    """[B][6] token lists (empty: no sentence) -> EvidenceTargets with pad 0."""
    b, e, length = len(ids), len(ids[0]), max(len(s) for clip in ids for s in clip)
    input_ids = torch.zeros(b, e, max(1, length), dtype=torch.long)
    for i, clip in enumerate(ids):
        for j, s in enumerate(clip):
            input_ids[i, j, : len(s)] = torch.tensor(s, dtype=torch.long)
    mask = (input_ids != 0).long()
    return EvidenceTargets(input_ids, mask, mask.bool().any(-1), torch.zeros(b, e, 4))


def test_slots_of_finds_recorded_sentences_only():
    bank = EvidenceBank(num_experts=2, bank_size=2, max_len=3, pad_token_id=0)
    t = _targets([[[5, 6], [7]], [[4], [8, 9, 10, 11]], [[5], [7]]])
    which = torch.tensor([[True, True], [False, True], [True, False]])
    bank.update(t.input_ids, t.attention_mask, which)  # expert 0: [5, 6], [5]; expert 1: [7], [8, 9, 10]
    slots = bank.slots_of(t.input_ids, t.attention_mask, torch.ones(3, 2, dtype=torch.bool))
    # [4] was never recorded (not selected); [8, 9, 10, 11] is found as its recorded 3-token cut;
    # [5] is not [5, 6] (the lengths differ)
    assert slots.tolist() == [[0, 0], [-1, 1], [1, 0]]
    assert bank.slots_of(t.input_ids, t.attention_mask, which).tolist() == [[0, 0], [-1, 1], [1, -1]]
    extra = _targets([[[1], [2]]])
    bank.update(extra.input_ids, extra.attention_mask, torch.tensor([[False, True]]))  # no free slot: overflow
    assert bank.slots_of(t.input_ids, t.attention_mask, which)[:, 1].tolist() == [-1, -1, -1]


def test_with_slots_records_new_sentences_and_marks_the_rest():
    bank = EvidenceBank(num_experts=6, bank_size=4, max_len=4, pad_token_id=0)
    t = _targets([[[], list(AUDIO_SENTENCES[0]), [], [], [], []], [[], list(AUDIO_SENTENCES[1]), [], [], [3], []]])
    annotated = torch.ones(2, 6, dtype=torch.bool)
    annotated[1, VISUAL] = False  # a measured sentence: not a read-out target, not recorded
    out = with_slots({"x": 1}, t, annotated, bank)
    assert out["x"] == 1 and bank.sizes() == [0, 2, 0, 0, 0, 0]
    assert out[SLOTS_KEY].tolist() == [[-1, 0, -1, -1, -1, -1], [-1, 1, -1, -1, -1, -1]]
    none = with_slots({}, None, annotated, bank)
    assert (none[SLOTS_KEY] == -1).all() and none[SLOTS_KEY].shape == (2, 6)


def _fitted_stack(decoding: str):
    """A stack whose audio read-out learned a slot that is a linear function of the audio summary."""
    torch.manual_seed(0)
    stack = _stack(evidence_max_len=6, evidence_decoder={"embed_dim": 16, "num_layers": 1, "num_heads": 2, "max_len": 8,
                                     "decoding": decoding, "bank_size": 4, "readout_c": 10.0}).eval()
    ids = torch.zeros(3, 6, 4, dtype=torch.long)
    for i, s in enumerate(AUDIO_SENTENCES):
        ids[i, AUDIO, : len(s)] = torch.tensor(s)
    which = torch.zeros(3, 6, dtype=torch.bool)
    which[:, AUDIO] = True
    stack.evidence_bank.update(ids, (ids != 0).long(), which)
    direction = torch.randn(stack.hidden_dim, 3)
    batches = [_batch(8) for _ in range(6)]
    with torch.no_grad():
        for b in batches:
            summ = stack(b, None, compute_losses=False).summaries[:, AUDIO]
            slots = torch.full((8, 6), -1, dtype=torch.long)
            slots[:, AUDIO] = (summ @ direction).argmax(-1)
            b[SLOTS_KEY] = slots
    return stack, batches, direction


def test_readout_refit_learns_the_slots_and_skips_experts_without_rows():
    stack, batches, direction = _fitted_stack("readout")
    stats = stack.refit_statistics(iter(batches))
    # clip 1 of every batch has no audio: its slot is not a row
    assert stats["evidence_readout_rows"] == 6 * 7
    assert stats["evidence_readout_train_accuracy"] >= 0.95
    readout = stack.evidence_readout
    assert readout.fitted(AUDIO) and int(readout.rows[AUDIO]) == 42
    assert not any(readout.fitted(e) for e in range(6) if e != AUDIO)
    assert (readout.bias[AUDIO, 3] < -1e3).item()  # an empty slot never wins
    with torch.no_grad():
        test = _batch(8)
        summ = stack(test, None, compute_losses=False).summaries[:, AUDIO]
    present = test["modality_mask"][:, AUDIO]
    agree = (readout.pick(summ, AUDIO) == (summ @ direction).argmax(-1))[present].float().mean()
    assert agree >= 0.8  # a held-out batch: the read-out generalises the linear rule
    before = readout.weight.clone()
    assert stack.refit_statistics(iter([_batch(4)])) == {}  # no slots: nothing read, the fit stays
    assert torch.equal(readout.weight, before)


def test_readout_decoding_writes_the_ranked_bank_sentence_and_greedy_elsewhere():
    greedy, _, _ = _fitted_stack("greedy")
    stack, batches, _ = _fitted_stack("readout")
    with torch.no_grad():
        test = _batch(8)
        out = stack(test, None, compute_losses=False)
        unfitted = stack.generate_evidence(out, max_new_tokens=6)  # no fit yet: greedy for every expert
        free = greedy.generate_evidence(out, max_new_tokens=6)
    assert torch.equal(unfitted, free)
    stack.refit_statistics(iter(batches))
    with torch.no_grad():
        picked = stack.generate_evidence(out, max_new_tokens=6)
        slots = stack.evidence_readout.pick(out.summaries[:, AUDIO], AUDIO)
    for b in range(8):
        if not bool(test["modality_mask"][b, AUDIO]):
            assert (picked[b, AUDIO] == 0).all()  # an absent expert gets no sentence
            continue
        want = list(AUDIO_SENTENCES[int(slots[b])])
        assert picked[b, AUDIO, : len(want)].tolist() == want and (picked[b, AUDIO, len(want):] == 0).all()
    others = [e for e in range(6) if e != AUDIO]
    width = min(picked.shape[2], free.shape[2])
    assert torch.equal(picked[:, others, :width], free[:, others, :width])
    assert len({int(s) for s in slots[test["modality_mask"][:, AUDIO]]}) > 1  # the read-out chose, per clip
    stack.train()  # a training step's brief: the read-out was fitted on these clips, so greedy
    with torch.no_grad():
        assert torch.equal(stack.generate_evidence(out, max_new_tokens=6), free)


def test_readout_config_is_checked():
    from omegaconf import OmegaConf

    from minigpt4.common.schema import INFERENCE_MODEL_KEYS, ConfigError, ModelConfig, model_config

    with pytest.raises(ConfigError, match="readout_c must be > 0"):
        model_config(OmegaConf.create({"evidence_decoder": {"readout_c": 0.0}}))
    assert model_config(OmegaConf.create({"evidence_decoder": {"decoding": "readout"}})).evidence_decoder.decoding \
        == "readout"
    assert "evidence_decoder.decoding" in INFERENCE_MODEL_KEYS
    with pytest.raises(ValueError, match="readout_c must be > 0"):
        EvidenceReadout(6, 4, 3, inverse_ridge=-1.0)
    assert np.isclose(ModelConfig().evidence_decoder.readout_c, 0.1)


def test_training_fits_the_readout_the_checkpoint_keeps_it_and_evaluation_writes_bank_sentences(
        tiny_llm_dir, tmp_path, caplog):
    import json
    import logging

    from safetensors.torch import load_file

    from minigpt4.cli.evaluate import run as eval_run
    from minigpt4.cli.train import run as train_run
    from minigpt4.common import checkpoint as ckpt
    from tests.test_eval import write_tiny_config, write_tiny_dataset

    labels = write_tiny_dataset(tmp_path / "data", {"train": 16, "test": 4})
    cfg = write_tiny_config(tmp_path, tiny_llm_dir, labels, iters_per_epoch=4)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="minigpt4.runners.runner_base"):
        train_run(["--cfg-path", str(cfg), "--options", "model.evidence_decoder.decoding=readout",
                   "run.max_epoch=2", f"run.output_dir={out}"])
    refits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics refit")]
    # before step 1 and after each epoch; 16 clips x (audio + visual sentences), all annotated and recorded
    assert len(refits) == 3 and all("evidence_readout_rows=32.0000" in m for m in refits)
    saved = load_file(str(ckpt.resolve_checkpoint(out) / "model.safetensors"))
    rows = saved["evidence_stack.evidence_readout.rows"].tolist()  # motion audio au text visual synergy
    assert rows == [0, 16, 0, 0, 16, 0]
    eval_run(["--cfg-path", str(out / "config.yaml"), "--ckpt", str(out), "--split", "test",
              "--max_new_tokens", "4", "--out", str(tmp_path / "eval")])
    annotated = {name: {r["evidence"][name] for r in json.loads(labels.read_text()) if r["split"] == "train"}
                 for name in ("audio", "visual")}
    recs = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    for rec in recs:
        for name in ("audio", "visual"):  # written by the read-out: always one of the training sentences
            assert rec["evidence"][name] in annotated[name], (name, rec["evidence"][name])
