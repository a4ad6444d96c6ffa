"""minigpt4.evaluation.metrics against hand-computed values on a small fixed prediction set."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from minigpt4.common import cot
from minigpt4.evaluation.evidence import evidence_metrics, evidence_summary_line, token_f1
from minigpt4.evaluation.metrics import (
    classification_metrics,
    compute_metrics,
    encode_labels,
    format_compliance,
    majority_baseline,
    mean_modality_weights,
    metric_drop,
    metrics_from_records,
    pred_distribution,
    summary_line,
)

LABELS = ["neutral", "angry", "happy", "sad", "surprise"]  # `surprise`: no gold clip, never predicted

# 10 labelled clips + 1 unlabeled one. Reports that do not parse predict `unknown` (wrong).
GOLD = ["happy", "happy", "happy", "sad", "sad", "angry", "angry", "neutral", "neutral", "neutral", None]
GOOD = {0: "happy", 1: "happy", 2: "sad", 3: "sad", 5: "angry", 6: "happy", 7: "neutral", 8: "neutral"}
BAD_REPORTS = {
    4: "### Evidence Analysis\n- Visual: a frown\n### Rationale\nlooks sad",  # no Prediction section
    9: "### Prediction\n{\"emotion\": \"bored\", \"confidence\": 0.4}",  # label outside the set
    10: "### Prediction\n{emotion: happy}",  # not JSON
}


def reports() -> list[str]:
    out = []
    for i in range(len(GOLD)):
        out.append(cot.build_cot_target(GOOD[i], {"visual": "v"}, "r", 0.8) if i in GOOD else BAD_REPORTS[i])
    return out


def parsed():
    return [cot.parse_report(r, LABELS) for r in reports()]


def test_parsed_fixture_is_what_the_hand_computation_assumes():
    p = parsed()
    assert [x.emotion for x in p] == ["happy", "happy", "sad", "sad", "unknown", "angry", "happy", "neutral",
                                      "neutral", "unknown", "unknown"]
    assert [x.format_ok for x in p].count(False) == 3


def test_headline_metrics_match_hand_computed_values():
    p = parsed()
    m = compute_metrics(GOLD, [x.emotion for x in p], LABELS, format_ok=[x.format_ok for x in p])
    # correct: clips 0, 1, 3, 5, 7, 8 of the 10 labelled ones
    assert m["n_clips"] == 11 and m["n_labeled"] == 10 and m["n_unlabeled"] == 1 and m["n_unknown_pred"] == 2
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["war"] == pytest.approx(0.6)  # weighted recall = accuracy
    # recalls: neutral 2/3, angry 1/2, happy 2/3, sad 1/2 (surprise has no gold clip: left out)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 1 / 2) / 4)
    # F1: neutral P=1 R=2/3 -> 0.8; angry P=1 R=1/2 -> 2/3; happy P=R=2/3; sad P=R=1/2
    f1 = {"neutral": 0.8, "angry": 2 / 3, "happy": 2 / 3, "sad": 0.5}
    support = {"neutral": 3, "angry": 2, "happy": 3, "sad": 2}
    assert m["weighted_f1"] == pytest.approx(sum(f1[c] * support[c] for c in f1) / 10)
    assert m["weighted_f1"] == pytest.approx(0.6733333333)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 4)
    assert m["format_compliance"] == pytest.approx(8 / 11)


def test_per_class_scores_and_confusion_matrix():
    m = classification_metrics(GOLD, [x.emotion for x in parsed()], LABELS)
    pc = m["per_class"]
    expect = {  # precision, recall, f1, support, pred_count
        "neutral": (1.0, 2 / 3, 0.8, 3, 2),
        "angry": (1.0, 0.5, 2 / 3, 2, 1),
        "happy": (2 / 3, 2 / 3, 2 / 3, 3, 3),
        "sad": (0.5, 0.5, 0.5, 2, 2),
    }
    for c, (p, r, f, s, n) in expect.items():
        assert pc[c]["precision"] == pytest.approx(p), c
        assert pc[c]["recall"] == pytest.approx(r), c
        assert pc[c]["f1"] == pytest.approx(f), c
        assert (pc[c]["support"], pc[c]["pred_count"]) == (s, n), c
    assert pc["surprise"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0, "pred_count": 0}
    cm = m["confusion_matrix"]
    assert cm["rows"] == LABELS and cm["cols"] == LABELS + ["unknown"]
    assert cm["matrix"] == [
        [2, 0, 0, 0, 0, 1],  # neutral: one report with a label outside the set
        [0, 1, 1, 0, 0, 0],
        [0, 0, 2, 1, 0, 0],
        [0, 0, 0, 1, 0, 1],  # sad: one report without a Prediction section
        [0, 0, 0, 0, 0, 0],
    ]
    assert sum(map(sum, cm["matrix"])) == m["n_labeled"]


def test_uar_is_scikit_learn_balanced_accuracy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold = [LABELS[i] for i in rng.integers(0, 4, size=30)]
        pred = [(LABELS + ["unknown"])[i] for i in rng.integers(0, 6, size=30)]
        m = classification_metrics(gold, pred, LABELS)
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
            warnings.simplefilter("ignore")
            ref = balanced_accuracy_score(gold, pred)
        assert m["uar"] == pytest.approx(ref)
        assert m["accuracy"] == pytest.approx(np.mean([g == p for g, p in zip(gold, pred)]))
        assert m["war"] == pytest.approx(m["accuracy"])


def test_unknown_predictions_are_wrong_not_dropped():
    gold = ["happy", "sad"]
    perfect = classification_metrics(gold, ["happy", "sad"], LABELS)
    half = classification_metrics(gold, ["happy", "unknown"], LABELS)
    assert perfect["accuracy"] == 1.0 and half["accuracy"] == 0.5
    assert half["per_class"]["sad"]["recall"] == 0.0 and half["uar"] == 0.5
    # anything outside the label set is `unknown`; case and spaces do not matter
    assert encode_labels([" Happy", "SAD", "bored", None], LABELS).tolist() == [2, 3, 5, 5]


def test_no_labelled_clip_gives_no_label_metrics_but_compliance():
    m = compute_metrics([None, "unknown"], ["happy", "unknown"], LABELS, format_ok=[True, False])
    assert m["accuracy"] is None and m["uar"] is None and m["weighted_f1"] is None
    assert m["format_compliance"] == 0.5 and m["n_labeled"] == 0
    json.dumps(m, allow_nan=False)  # plain JSON


def test_format_compliance_counts_parser_failures():
    reps = reports()
    flags = [cot.parse_report(r, LABELS).format_ok for r in reps]
    assert format_compliance(flags) == pytest.approx(8 / 11)
    assert format_compliance([None, None]) is None  # the classification head writes no report
    assert format_compliance([True, None, False]) == 0.5


def test_mean_modality_weights_per_gold_class():
    experts = ["audio", "visual"]
    gold = ["happy", "happy", "sad", None]
    weights = [{"audio": 0.2, "visual": 0.8}, {"audio": 0.6, "visual": 0.4}, {"audio": 1.0, "visual": 0.0},
               {"audio": 0.0, "visual": 1.0}]
    out = mean_modality_weights(gold, weights, LABELS, experts)
    assert out["happy"] == pytest.approx({"audio": 0.4, "visual": 0.6})
    assert out["sad"] == pytest.approx({"audio": 1.0, "visual": 0.0})
    assert out["neutral"] is None and out["surprise"] is None
    assert out["all"] == pytest.approx({"audio": 0.45, "visual": 0.55})  # the unlabeled clip counts here
    with pytest.raises(ValueError, match="lack expert"):
        mean_modality_weights(["happy"], [{"audio": 1.0}], LABELS, experts)


def test_metric_drop_and_summary_line():
    full = classification_metrics(["happy", "sad", "sad", "angry"], ["happy", "sad", "sad", "angry"], LABELS)
    full["format_compliance"] = 1.0
    reduced = classification_metrics(["happy", "sad", "sad", "angry"], ["happy", "sad", "happy", "unknown"], LABELS)
    reduced["format_compliance"] = 0.75
    reduced["majority_baseline"] = majority_baseline(["happy", "sad", "sad", "angry"], LABELS)
    drop = metric_drop(full, reduced)
    assert drop["accuracy"] == pytest.approx(0.5)
    assert drop["uar"] == pytest.approx(1.0 - (1 + 0.5 + 0) / 3)
    assert drop["format_compliance"] == pytest.approx(0.25)
    assert drop["per_class_recall"]["sad"] == pytest.approx(0.5)
    assert drop["per_class_recall"]["neutral"] is None
    line = summary_line(reduced)
    assert line.startswith("accuracy 0.5000 | W-F1 ") and "UAR 0.5000" in line and line.endswith("format 0.7500 | majority 0.5000")
    assert summary_line({"accuracy": None}).startswith("accuracy n/a")
    assert summary_line({"accuracy": None}).endswith("majority n/a")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="not in the label set"):
        classification_metrics(["excited"], ["happy"], LABELS)
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_metrics(["happy", "sad"], ["happy"], LABELS)
    with pytest.raises(ValueError, match="reserved"):
        classification_metrics(["happy"], ["happy"], ["happy", "unknown"])
    with pytest.raises(ValueError, match="unique"):
        classification_metrics(["happy"], ["happy"], ["happy", "Happy"])


# ------------------------------------------------------- distribution, baseline, evidence
def test_pred_distribution_and_majority_baseline_by_hand():
    p = parsed()
    m = compute_metrics(GOLD, [x.emotion for x in p], LABELS, format_ok=[x.format_ok for x in p])
    # 11 predictions (the unlabeled clip counts): happy 3, sad 2, neutral 2, angry 1, unknown 3
    assert m["pred_distribution"] == pytest.approx(
        {"neutral": 2 / 11, "angry": 1 / 11, "happy": 3 / 11, "sad": 2 / 11, "surprise": 0.0, "unknown": 3 / 11})
    assert list(m["pred_distribution"]) == LABELS + ["unknown"]
    assert m["max_pred_class"] == "happy" and m["max_pred_share"] == pytest.approx(3 / 11)  # unknown excluded
    # gold (10 labelled): happy 3, neutral 3 -> tie, first in label-set order wins
    assert m["majority_baseline"] == {"class": "neutral", "accuracy": pytest.approx(0.3)}
    assert pred_distribution([], LABELS) is None and majority_baseline([None, "unknown"], LABELS) is None
    json.dumps(m, allow_nan=False)


def test_token_f1_against_hand_computed_values():
    assert token_f1("The voice sounds angry.", "the voice sounds angry") == 1.0  # case, punctuation
    # pred tokens [a, loud, voice], gold [the, voice, is, loud]: common 2 -> P 2/3, R 1/2, F1 4/7
    assert token_f1("A loud voice!", "The voice is loud.") == pytest.approx(4 / 7)
    # bag of tokens: "sad sad face" vs "sad face": common 2 (sad once, face) -> P 2/3, R 1 -> 0.8
    assert token_f1("sad sad face", "sad face") == pytest.approx(0.8)
    assert token_f1("smiling", "frowning") == 0.0
    assert token_f1(None, "a frown") == 0.0 and token_f1("", "") == 1.0 and token_f1("...", "") == 1.0


def test_evidence_metrics_by_hand():
    generated = [{"audio": "A loud voice!", "visual": "a frown"}, {"audio": "a  LOUD voice!"}, {}, {"audio": "quiet"}]
    golden = [{"audio": "The voice is loud.", "visual": "A frown"}, {"audio": "A loud voice!"}, {"audio": "x y"}, {}]
    ev = evidence_metrics(generated, golden, ["audio", "visual", "text"])
    # audio: 3 sentences, 2 distinct after whitespace/case folding ("a loud voice!", "quiet")
    assert ev["audio"]["n_sentences"] == 3 and ev["audio"]["n_distinct"] == 2
    # golden audio on clips 0-2: F1 4/7, exact 1.0, missing sentence 0
    assert ev["audio"]["n_golden"] == 3 and ev["audio"]["exact_match"] == pytest.approx(1 / 3)
    assert ev["audio"]["token_f1"] == pytest.approx((4 / 7 + 1.0 + 0.0) / 3)
    assert ev["visual"] == {"n_sentences": 1, "n_distinct": 1, "n_golden": 1, "exact_match": 1.0, "token_f1": 1.0}
    assert ev["text"] == {"n_sentences": 0, "n_distinct": 0}  # no golden text: no EM / F1 keys
    assert evidence_summary_line(ev) == "evidence exact match: audio 0.33 | visual 1.00"
    assert evidence_summary_line({"text": ev["text"]}) is None


def test_metrics_from_records_adds_evidence_and_warnings_on_hand_built_records():
    records = [
        {"gold_emotion": "happy", "pred_emotion": "happy", "format_ok": True, "modality_weights": None,
         "evidence": {"audio": "a laugh"}, "golden_evidence": {"audio": " A  LAUGH"}},
        {"gold_emotion": "sad", "pred_emotion": "happy", "format_ok": True, "modality_weights": None,
         "evidence": {"audio": "a sigh"}, "golden_evidence": {}},
        {"gold_emotion": "sad", "pred_emotion": "sad", "format_ok": False, "modality_weights": None,
         "evidence": {}},  # an older record without golden_evidence
    ]
    m = metrics_from_records(records, LABELS, ["audio", "visual"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["format_compliance"] == pytest.approx(2 / 3)
    assert m["majority_baseline"] == {"class": "sad", "accuracy": pytest.approx(2 / 3)}
    assert m["max_pred_class"] == "happy" and m["max_pred_share"] == pytest.approx(2 / 3)
    assert m["evidence"]["audio"] == {"n_sentences": 2, "n_distinct": 2, "n_golden": 1, "exact_match": 1.0,
                                      "token_f1": 1.0}
    assert m["evidence"]["visual"] == {"n_sentences": 0, "n_distinct": 0}
    # accuracy equals the majority baseline, happy takes 67% of predictions: two warnings
    assert len(m["collapse_warnings"]) == 2
    assert "majority baseline" in m["collapse_warnings"][0] and "'happy'" in m["collapse_warnings"][1]
