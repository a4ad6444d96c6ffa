"""Where each expert's sentence comes from (measured / generated / none) and the transcript line."""
from __future__ import annotations

import torch

from minigpt4.common.modalities import EXPERT_ORDER, VIDEO_PLACEHOLDER
from minigpt4.datasets.datasets.collate import drop_modalities
from minigpt4.models.hero import evidence_sources as src
from minigpt4.models.hero.user_turn import BRIEF_HEADER, compose_user_turn


class WordTokenizer:
    """One token per word: enough to pin the cut of `transcript_lines`."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(range(len(t.split()))) for t in texts], "_words": [t.split() for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[: len(ids)])


def test_transcript_line_is_cut_to_max_tokens_and_absent_when_empty() -> None:
    tok = WordTokenizer()
    tok.words = "one two three four five six".split()
    lines = src.transcript_lines(tok, ["one two three four five six", "  ", "hi  there"], 'says: "{}"', 4, 3)
    assert lines == ['says: "one two three four ..."', None, 'says: "hi there"']
    assert src.transcript_lines(tok, None, "{}", 4, 2) == [None, None]


def test_spoken_line_goes_after_the_brief_and_before_the_instruction() -> None:
    turn = compose_user_turn(f"{VIDEO_PLACEHOLDER} Answer.", [("audio", "Loud.")], 'The person says: "no way"')
    assert turn == f'{VIDEO_PLACEHOLDER}\n{BRIEF_HEADER}\n[audio] Loud.\nThe person says: "no way"\nAnswer.'
    assert compose_user_turn("Answer.", [], None) == compose_user_turn("Answer.", [], "  ")


def test_coverage_starts_unrecorded_then_keeps_what_training_saw() -> None:
    cov = src.EvidenceCoverage()
    assert cov.trained().all()  # an old checkpoint without the buffer: every expert as before
    present = torch.zeros(2, len(EXPERT_ORDER), dtype=torch.bool)
    present[0, EXPERT_ORDER.index("au")] = True
    cov.update(present)
    assert cov.trained().tolist() == [name == "au" for name in EXPERT_ORDER]
    present[:] = False
    present[1, EXPERT_ORDER.index("text")] = True
    cov.update(present)
    cov.update(None)  # a batch without any target forgets nothing
    assert [n for n, t in zip(EXPERT_ORDER, cov.trained().tolist()) if t] == ["au", "text"]


def test_measured_wins_decoded_fills_trained_the_rest_says_none() -> None:
    samples = {"evidence": [{"au": "AU12 (peak 2.0 of 5)", "audio": "Golden."}, {}],
               "evidence_source": [{"au": "measured", "audio": "annotated"}, {}]}
    measured = src.measured_of(samples, 2)
    assert measured == [{"au": "AU12 (peak 2.0 of 5)"}, {}]  # annotated sentences never reach inference
    present = torch.ones(2, len(EXPERT_ORDER), dtype=torch.bool)
    present[1, EXPERT_ORDER.index("visual")] = False
    trained = torch.tensor([name != "motion" for name in EXPERT_ORDER])
    which = src.decodable(present, trained, measured)
    assert not which[:, EXPERT_ORDER.index("motion")].any() and not which[0, EXPERT_ORDER.index("au")]
    assert which[1, EXPERT_ORDER.index("au")] and not which[1, EXPERT_ORDER.index("visual")]
    decoded = [{"audio": "raised voice", "au": "ignored"}, {"audio": "soft voice"}]
    sentences, sources = src.combine(decoded, measured, present)
    assert sentences[0] == {"au": "AU12 (peak 2.0 of 5)", "audio": "raised voice"}
    assert sources[0]["au"] == "measured" and sources[0]["audio"] == "generated" and sources[0]["motion"] == "none"
    assert "visual" not in sources[1]  # absent experts get no entry at all


def test_dropping_a_modality_drops_what_was_measured_from_it() -> None:
    batch = {"video_features": torch.ones(1, 5, 2, 3), "feature_mask": torch.ones(1, 5, 2, dtype=torch.bool),
             "modality_mask": torch.ones(1, 5, dtype=torch.bool),
             "evidence": [{"audio": "Loud (measured).", "au": "AU04.", "text": 'says "hi"'}],
             "evidence_source": [{"audio": "measured", "au": "annotated", "text": "measured"}]}
    out = drop_modalities(batch, ["audio", "au"])
    assert out["evidence"] == [{"au": "AU04.", "text": 'says "hi"'}]  # the annotated reference stays
    assert out["evidence_source"] == [{"au": "annotated", "text": "measured"}]
    assert batch["evidence"][0]["audio"] == "Loud (measured)."  # the input batch is unchanged


def test_only_annotated_sentences_teach_the_decoder_which_experts_it_may_write_for() -> None:
    samples = {"evidence": [{"au": "AU12 (peak 2.0 of 5)", "audio": "Golden.", "text": "  "}],
               "evidence_source": [{"au": "measured", "audio": "annotated", "text": "annotated"}]}
    mask = src.annotated_mask(samples, 1)
    assert [n for n, m in zip(EXPERT_ORDER, mask[0].tolist()) if m] == ["audio"]
    hand_built = src.annotated_mask({"evidence": [{"visual": "Smiles."}]}, 1)  # no sources: annotated
    assert [n for n, m in zip(EXPERT_ORDER, hand_built[0].tolist()) if m] == ["visual"]
    assert not src.annotated_mask({}, 2).any()
