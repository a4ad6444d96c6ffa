"""The evidence decoder's compact output vocabulary: what it records, and that scoring only the
taught tokens gives the full vocabulary's loss, scores and sentences whenever the full
vocabulary would not have picked an untaught token."""
from __future__ import annotations

import pytest
import torch

from minigpt4.models.hero.evidence_decoder import EvidenceDecoder
from minigpt4.models.hero.evidence_vocab import EvidenceVocabulary

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, BOS, EOS, PAD = 500, 1, 2, 0
SENTENCES = [[17, 40, 41, 99], [17, 63, 250], [300, 301, 302, 303, 40], [63]]


def test_vocabulary_records_sorted_distinct_ids_and_overflows_for_good():
    vocab = EvidenceVocabulary(VOCAB, capacity=6)
    assert vocab.active() is None  # nothing taught yet: the full vocabulary
    vocab.observe(torch.tensor([[9, 3, 9], [4, 3, 2]]))
    assert vocab.active().tolist() == [2, 3, 4, 9]
    assert vocab.with_targets(torch.tensor([7, 3])).tolist() == [2, 3, 4, 7, 9]
    assert vocab.active().tolist() == [2, 3, 4, 9]  # a loss's extra targets are not recorded
    vocab.observe(torch.tensor([1, 2]))
    assert vocab.active().tolist() == [1, 2, 3, 4, 9]
    vocab.observe(torch.tensor([10, 11]))  # 7 distinct > 6
    assert vocab.active() is None and int(vocab.overflow) == 1
    vocab.observe(torch.tensor([1]))
    assert vocab.active() is None  # stays overflowed
    with pytest.raises(ValueError, match="capacity"):
        EvidenceVocabulary(VOCAB, 0)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in SENTENCES)
    ids = torch.full((len(SENTENCES), width), PAD, dtype=torch.long)
    for i, s in enumerate(SENTENCES):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, (ids != PAD).long()


def _pair() -> tuple[EvidenceDecoder, EvidenceDecoder]:
    """The same weights, full vs compact output; untaught tokens' bias at -1e4 so the full
    vocabulary's choices always fall among the taught tokens (as they do once trained)."""
    torch.manual_seed(0)
    kw = dict(num_experts=3, embed_dim=16, num_layers=1, num_heads=2, max_len=10, dropout=0.0)
    full = EvidenceDecoder(VOCAB, 12, BOS, EOS, PAD, **kw)
    compact = EvidenceDecoder(VOCAB, 12, BOS, EOS, PAD, output_vocab_size=64, **kw)
    compact.load_state_dict(full.state_dict(), strict=False)
    ids, mask = _batch()
    memory, experts = torch.randn(len(SENTENCES), 5, 12), torch.tensor([0, 1, 2, 0])
    compact.train()
    compact.loss(memory, experts, ids, mask)  # a training step records what it teaches
    taught = compact.vocab.active()
    assert taught.tolist() == sorted({t for s in SENTENCES for t in s} | {EOS})
    with torch.no_grad():
        outside = torch.ones(VOCAB, dtype=torch.bool)
        outside[taught] = False
        for dec in (full, compact):
            dec.output_bias[outside] = -1e4
            dec.eval()
    return full, compact


def test_compact_output_gives_the_full_vocabulary_loss_scores_and_sentences():
    full, compact = _pair()
    ids, mask = _batch()
    torch.manual_seed(1)
    memory, experts = torch.randn(len(SENTENCES), 5, 12) * 3, torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(compact.loss(memory, experts, ids, mask), full.loss(memory, experts, ids, mask))
    torch.testing.assert_close(compact.score(memory, experts, ids, mask), full.score(memory, experts, ids, mask))
    written = compact.generate(memory, experts, max_new_tokens=9)
    assert torch.equal(written, full.generate(memory, experts, max_new_tokens=9))
    assert set(written.flatten().tolist()) <= set(compact.vocab.active().tolist()) | {PAD}


def test_a_target_outside_the_recorded_set_is_still_scored_in_eval():
    """Validation scores sentences the decoder was never taught: they join the set for that loss only."""
    _, compact = _pair()
    ids, mask = _batch()
    unseen = ids.clone()
    unseen[0, 0] = 444
    before = compact.vocab.active().clone()
    loss = compact.loss(torch.randn(len(SENTENCES), 5, 12), torch.tensor([0, 1, 2, 0]), unseen, mask)
    assert torch.isfinite(loss) and torch.equal(compact.vocab.active(), before)


def test_an_untaught_decoder_and_an_old_checkpoint_use_the_full_vocabulary():
    torch.manual_seed(0)
    dec = EvidenceDecoder(VOCAB, 12, BOS, EOS, PAD, embed_dim=16, num_layers=1, num_heads=2, max_len=10,
                          output_vocab_size=64).eval()
    assert dec.output_ids() is None
    memory = torch.randn(2, 5, 12)
    logits_width = dec.project(torch.randn(3, 16), dec.output_ids()).shape[-1]
    assert logits_width == VOCAB
    # a state saved before the compact vocabulary existed lacks its buffers: loading leaves it empty
    state = {k: v for k, v in dec.state_dict().items() if not k.startswith("vocab.")}
    dec.load_state_dict(state, strict=False)
    assert dec.output_ids() is None and dec.generate(memory, torch.tensor([0, 1]), 3).shape[0] == 2
