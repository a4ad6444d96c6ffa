"""Collapse detection in evaluation: a model that predicts one class and writes one sentence
per expert must be flagged (metrics.json `collapse_warnings`, `WARNING:` lines), a healthy one
must not; plus `golden_evidence` in the records, `generation_metrics` and `--no_brief`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import pytest

from minigpt4.cli import evaluate as eval_cli
from minigpt4.evaluation import records as eu
from minigpt4.evaluation.metrics import (
    MAX_DISTINCT_COLLAPSED,
    MIN_SENTENCES_FOR_DIVERSITY,
    collapse_warnings,
    generation_metrics,
    metrics_from_records,
)
from minigpt4.common.modalities import EXPERT_ORDER

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
N = 40  # gold: neutral / angry / happy / sad, 10 each


def _gold(i: int) -> str:
    return LABELS[i % 4]


def _record(i: int, pred: str, audio: str) -> dict[str, Any]:
    gold = _gold(i)
    output = {"report": f"### Prediction\n{pred}", "emotion": pred, "confidence": 0.6, "format_ok": True,
              "evidence": {"audio": audio, "visual": f"face number {i} looks {pred}"},
              "modality_weights": {e: 1 / 6 for e in EXPERT_ORDER}, "synergy_score": 0.5}
    golden = {"audio": f"The voice sounds {gold}.", "visual": f"face number {i} looks {gold}"}
    return eu.make_record(f"clip_{i:03d}", gold, output, golden_evidence=golden)


def collapsed_records() -> list[dict[str, Any]]:
    """90% `surprise` (a class with no gold clip), the same audio sentence for every clip."""
    return [_record(i, _gold(i) if i % 10 == 0 else "surprise", "The voice is raised.") for i in range(N)]


def healthy_records() -> list[dict[str, Any]]:
    """80% correct, errors spread over classes, one audio sentence per predicted class."""
    recs = []
    for i in range(N):
        pred = _gold(i) if i % 5 else LABELS[(i + 1) % 4]
        recs.append(_record(i, pred, f"The voice sounds {pred}."))
    return recs


def _round_trip(tmp_path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    path = eu.write_jsonl(tmp_path / eu.PREDICTIONS_FILE, records)
    back = eu.read_jsonl(path)
    assert all(list(r) == list(eu.RECORD_KEYS) for r in back)
    return back


# ------------------------------------------------------------------- detection
def test_collapsed_predictions_file_warns_naming_the_class_and_the_expert(tmp_path: Path):
    recs = _round_trip(tmp_path, collapsed_records())
    m = metrics_from_records(recs, LABELS)
    assert m["max_pred_class"] == "surprise" and m["max_pred_share"] == pytest.approx(0.9)
    assert m["pred_distribution"]["surprise"] == pytest.approx(0.9)
    assert m["majority_baseline"] == {"class": "neutral", "accuracy": pytest.approx(0.25)}
    assert m["accuracy"] == pytest.approx(0.1)
    assert m["evidence"]["audio"]["n_sentences"] == N and m["evidence"]["audio"]["n_distinct"] == 1
    assert m["evidence"]["audio"]["exact_match"] == 0.0 and m["evidence"]["audio"]["n_golden"] == N
    assert m["evidence"]["visual"]["n_distinct"] == N
    warnings = m["collapse_warnings"]
    assert warnings == collapse_warnings(m)
    assert any("majority baseline" in w and "below" in w for w in warnings)
    assert any("'surprise'" in w and "90.0%" in w for w in warnings)
    assert any("'audio'" in w and "1 distinct" in w for w in warnings)
    assert not any("'visual'" in w for w in warnings)
    json.dumps(m, allow_nan=False)


def test_healthy_predictions_file_raises_no_warning(tmp_path: Path):
    m = metrics_from_records(_round_trip(tmp_path, healthy_records()), LABELS)
    assert m["accuracy"] == pytest.approx(0.8) and m["max_pred_share"] == pytest.approx(0.25)
    assert m["evidence"]["audio"]["n_distinct"] == 4
    assert m["collapse_warnings"] == []


def test_thresholds_at_their_edges():
    base = {"accuracy": 0.30, "majority_baseline": {"class": "neutral", "accuracy": 0.25}}
    assert len(collapse_warnings(base)) == 1  # within the 0.05 margin
    assert collapse_warnings({**base, "accuracy": 0.31}) == []
    # over-predicting a class against its gold share (10% gold, 30% predicted), known gold only
    dist = {"neutral": 0.3, "angry": 0.7 / 3, "happy": 0.7 / 3, "sad": 0.7 / 3, "unknown": 0.0}
    gold = {"n_labeled": 10, "per_class": {"neutral": {"support": 1}, "angry": {"support": 3},
                                           "happy": {"support": 3}, "sad": {"support": 3}}}
    assert [w for w in collapse_warnings({"pred_distribution": dist, **gold}) if "'neutral'" in w and "2x" in w]
    assert collapse_warnings({"pred_distribution": dist}) == []  # 30% alone is fine
    ev = {"n_sentences": MIN_SENTENCES_FOR_DIVERSITY, "n_distinct": MAX_DISTINCT_COLLAPSED}
    assert len(collapse_warnings({"evidence": {"au": ev}})) == 1
    assert collapse_warnings({"evidence": {"au": {**ev, "n_sentences": MIN_SENTENCES_FOR_DIVERSITY - 1}}}) == []
    assert collapse_warnings({"evidence": {"au": {**ev, "n_distinct": MAX_DISTINCT_COLLAPSED + 1}}}) == []
    assert collapse_warnings({}) == []  # an unlabeled split without evidence: nothing to say


def test_generation_metrics_is_the_short_plain_summary():
    g = generation_metrics(collapsed_records(), LABELS)
    assert set(g) == {"n_clips", "accuracy", "weighted_f1", "uar", "format_compliance", "majority_baseline",
                      "max_pred_share", "max_pred_class", "n_distinct_evidence", "head_accuracy", "head_agreement",
                      "collapse_warnings"}
    assert g["accuracy"] == pytest.approx(0.1) and g["majority_baseline"] == pytest.approx(0.25)
    assert g["max_pred_class"] == "surprise" and g["format_compliance"] == 1.0
    assert g["n_distinct_evidence"] == {"motion": 0, "audio": 1, "au": 0, "text": 0, "visual": N, "synergy": 0}
    assert len(g["collapse_warnings"]) == 3
    assert generation_metrics(healthy_records(), LABELS)["collapse_warnings"] == []
    json.dumps(g, allow_nan=False)


# --------------------------------------------------------------------- records
def test_records_carry_the_batch_golden_evidence():
    batch = {"video_id": ["a", "b"], "emotion_label": ["happy", "unknown"],
             "evidence": [{"audio": "A laugh."}, {}]}
    outputs = [{"emotion": "happy", "evidence": {"audio": "a laugh"}}, {"emotion": "sad"}]
    recs = eu.records_from_batch(batch, outputs, label_names=LABELS)
    assert [r["golden_evidence"] for r in recs] == [{"audio": "A laugh."}, {}]
    assert list(recs[0]) == list(eu.RECORD_KEYS)
    assert eu.RECORD_KEYS[-5:] == ("golden_evidence", "head_emotion", "head_confidence", "confidence_source",
                                   "label_probs")
    # no classification head in these outputs
    assert [(r["head_emotion"], r["label_probs"], r["confidence_source"]) for r in recs] == [(None, None, None)] * 2
    no_evidence = eu.records_from_batch({"video_id": ["c"]}, [{"emotion": "sad"}])
    assert no_evidence[0]["golden_evidence"] == {}
    # a measured sentence is the model's input, not a reference: it stays out of golden_evidence;
    # the sources and the transcript the prompt quoted are kept
    measured = {"video_id": ["d"], "emotion_label": ["sad"], "transcript": ["I miss her."],
                "evidence": [{"audio": "A sob.", "au": "AU15 lip corner depressor (peak 2.0 of 5)"}],
                "evidence_source": [{"audio": "annotated", "au": "measured"}]}
    out = {"emotion": "sad", "evidence": {"au": "AU15 lip corner depressor (peak 2.0 of 5)", "audio": "a sob"},
           "evidence_source": {"au": "measured", "audio": "generated", "motion": "none"}}
    rec = eu.records_from_batch(measured, [out])[0]
    assert rec["golden_evidence"] == {"audio": "A sob."} and rec["transcript"] == "I miss her."
    assert rec["evidence_source"] == {"au": "measured", "audio": "generated", "motion": "none"}


# -------------------------------------------------------------------- --no_brief
def test_no_brief_parses_names_its_folder_and_excludes_the_head(tmp_path: Path, capsys):
    base = ["--cfg-path", "c.yaml", "--ckpt", "x"]
    assert eval_cli.parse_args(base).no_brief is False
    assert eval_cli.parse_args(base + ["--no_brief"]).no_brief is True
    assert eu.condition_tag(no_brief=True) == "_nobrief"
    assert eu.default_out_dir(tmp_path, "test", no_brief=True).name == "eval_test_nobrief"
    assert eu.default_out_dir(tmp_path, "test", ["audio"], no_cot=True, no_brief=True).name == \
        "eval_test_missing-audio_nocot_nobrief"
    with pytest.raises(SystemExit) as exc:
        eval_cli.parse_args(base + ["--no_brief", "--use_cls_head"])
    assert exc.value.code == 2 and "--no_brief and --use_cls_head exclude each other" in capsys.readouterr().err


class _BriefModel:
    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []

    def generate(self, samples: Mapping[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        self.kwargs.append(kwargs)
        return [{"emotion": "happy", "format_ok": True, "report": "r"} for _ in samples["video_id"]]


def test_predict_shard_passes_brief_only_when_set():
    batch = {"video_id": ["a"], "emotion_label": ["happy"], "evidence": [{"audio": "a laugh"}]}
    model = _BriefModel()
    recs = eval_cli.predict_shard(model, [batch], LABELS, brief=False)
    eval_cli.predict_shard(model, [batch], LABELS)  # default: the model's own setting
    assert model.kwargs == [{"use_cot": True, "brief": False}, {"use_cot": True}]
    assert recs["full"][0]["golden_evidence"] == {"audio": "a laugh"}


# ---------------------------------------------------------------- write_outputs
def test_write_outputs_prints_the_summary_then_loud_warnings(tmp_path: Path, capsys):
    recs = collapsed_records()
    out = tmp_path / "eval_test_nobrief"
    meta = {"split": "test", "brief": False}
    metrics = eval_cli.write_outputs(out, {"full": [recs[::2], recs[1::2]]}, [r["video_id"] for r in recs],
                                      LABELS, [], meta, time.time())
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    summary = [l for l in lines if l.startswith("eval test")]
    assert len(summary) == 1 and " | format 1.0000 | majority 0.2500 | ECE " in summary[0]
    # every report says confidence 0.6 (one bin): the reliability diagram is drawn and ECE = 0.6 - accuracy
    assert metrics["calibration"]["ece"] == pytest.approx(0.6 - metrics["accuracy"])
    assert (out / "reliability.png").is_file() and "reliability.png" in metrics["files"]
    assert "evidence exact match: audio 0.00 | visual 0.10" in lines
    warned = [l for l in captured.err.splitlines() if l.startswith("WARNING: ")]
    assert len(warned) == 3 and warned == [f"WARNING: {w}" for w in metrics["collapse_warnings"]]
    assert any("'surprise'" in w for w in warned) and any("'audio'" in w for w in warned)
    on_disk = json.loads((out / eu.METRICS_FILE).read_text())
    assert on_disk["brief"] is False and on_disk["collapse_warnings"] == metrics["collapse_warnings"]
    for key in ("pred_distribution", "max_pred_share", "max_pred_class", "majority_baseline", "evidence"):
        assert key in on_disk, key
    assert eu.read_jsonl(out / eu.PREDICTIONS_FILE)[0]["golden_evidence"] == recs[0]["golden_evidence"]
    # a healthy run: the same two lines on stdout, nothing on stderr
    eval_cli.write_outputs(tmp_path / "ok", {"full": [healthy_records()]}, None, LABELS, [], meta, time.time())
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err and "| majority 0.2500" in captured.out


def test_head_metrics_accuracy_and_agreement():
    from minigpt4.evaluation.metrics import head_metrics

    recs = [{"gold_emotion": "happy", "pred_emotion": "happy", "head_emotion": "happy"},
            {"gold_emotion": "sad", "pred_emotion": "happy", "head_emotion": "sad"},
            {"gold_emotion": None, "pred_emotion": "unknown", "head_emotion": "sad"},  # unlabeled, unparsed
            {"gold_emotion": "sad", "pred_emotion": "sad", "head_emotion": "happy"}]
    h = head_metrics(recs, LABELS)
    assert h == {"accuracy": 2 / 3, "agreement": 1 / 4, "n_clips": 4}
    assert head_metrics([{"gold_emotion": "sad", "pred_emotion": "sad", "head_emotion": None}], LABELS) is None
