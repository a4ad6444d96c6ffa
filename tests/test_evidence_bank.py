"""The evidence bank: what it records, and closed-set decoding through the evidence stack."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.models.hero.evidence_bank import EvidenceBank
from minigpt4.models.hero.evidence_stack import HEROEvidenceStack


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(sentences: list[list[list[int]]], length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """[B][E] token lists -> (ids [B, E, length], mask) with pad 0."""
    b, e = len(sentences), len(sentences[0])
    ids = torch.zeros(b, e, length, dtype=torch.long)
    for i, clip in enumerate(sentences):
        for j, s in enumerate(clip):
            ids[i, j, : len(s)] = torch.tensor(s)
    return ids, (ids != 0).long()


def test_bank_records_distinct_annotated_sentences_and_marks_overflow():
    bank = EvidenceBank(num_experts=2, bank_size=2, max_len=3, pad_token_id=0)
    ids, mask = _rows([[[5, 6], [7]], [[5, 6], [8, 9, 10, 11]], [[4], [12]]])
    annotated = torch.tensor([[True, True], [True, True], [False, True]])
    bank.update(ids, mask, annotated)
    # expert 0: [5, 6] once (duplicate), [4] not annotated; expert 1: [7], then [8, 9, 10] cut to 3 tokens,
    # then [12] finds no free slot: overflow
    assert bank.sizes() == [1, -1]
    cand, cmask = bank.candidates(0)
    assert cand.tolist() == [[5, 6]] and cmask.tolist() == [[1, 1]]
    assert bank.candidates(1) is None
    bank.update(*_rows([[[4], [13]]]), torch.tensor([[True, True]]))
    cand, cmask = bank.candidates(0)
    assert cand.tolist() == [[5, 6], [4, 0]] and cmask.tolist() == [[1, 1], [1, 0]]
    assert bank.sizes() == [2, -1]  # an overflowed expert stays overflowed
    empty = EvidenceBank(2, 2, 3, 0)
    assert empty.candidates(0) is None and empty.sizes() == [0, 0]


def _stack(decoding: str) -> HEROEvidenceStack:
    cfg = OmegaConf.create(dict(visual_dim=6, video_dim=5, audio_dim=7, au_dim=4, text_dim=3, hidden_dim=16,
                                num_queries=2, num_qformer_layers=1, num_output_queries=3, num_heads=2, dropout=0.0,
                                evidence_max_len=6, lambda_stmil=0.0,
                                evidence_decoder={"embed_dim": 16, "num_layers": 1, "num_heads": 2, "max_len": 8,
                                                  "decoding": decoding, "bank_size": 4}))
    torch.manual_seed(0)
    return HEROEvidenceStack(cfg, llm_dim=12, vocab_size=30, bos_token_id=1, eos_token_id=2, pad_token_id=0).eval()


def _batch(b: int = 3) -> dict:
    feats = torch.randn(b, 5, 4, 8)
    return {"video_features": feats, "feature_mask": torch.ones(b, 5, 4, dtype=torch.bool),
            "modality_mask": torch.ones(b, 5, dtype=torch.bool)}


def test_bank_decoding_picks_the_best_scored_recorded_sentence_and_greedy_elsewhere():
    greedy, banked = _stack("greedy"), _stack("bank")
    banked.load_state_dict(greedy.state_dict())
    sentences = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ids = torch.zeros(3, 6, 4, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, 1, : len(s)] = torch.tensor(s)  # audio: three recorded sentences
    annotated = torch.zeros(3, 6, dtype=torch.bool)
    annotated[:, 1] = True
    banked.evidence_bank.update(ids, (ids != 0).long(), annotated)
    with torch.no_grad():
        out = banked(_batch(), None, compute_losses=False)
        picked = banked.generate_evidence(out, max_new_tokens=6)
        free = greedy.generate_evidence(out, max_new_tokens=6)
        cand, cmask = banked.evidence_bank.candidates(1)
        scores = banked.decoder.score(out.expert_tokens[:, 1], torch.ones(3, dtype=torch.long), cand, cmask)
    for b in range(3):
        want = sentences[int(scores[b].argmax())]
        assert picked[b, 1, : len(want)].tolist() == want and (picked[b, 1, len(want):] == 0).all()
    others = [e for e in range(6) if e != 1]  # no bank: the same greedy sentences as decoding: greedy
    width = min(picked.shape[2], free.shape[2])
    assert torch.equal(picked[:, others, :width], free[:, others, :width])
    assert (picked[:, others, width:] == 0).all() and (free[:, others, width:] == 0).all()


def test_decoding_is_checked_and_may_differ_at_evaluation():
    from minigpt4.common.schema import INFERENCE_MODEL_KEYS, ConfigError

    with pytest.raises((ValueError, ConfigError), match="decoding must be one of greedy, bank"):
        _stack("beam")
    assert "evidence_decoder.decoding" in INFERENCE_MODEL_KEYS
