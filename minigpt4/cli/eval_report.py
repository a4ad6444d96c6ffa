"""The output half of `hero-eval`: merge the ranks' records, score them, write the files.

Into the output folder: `predictions.jsonl` (plus `predictions_full.jsonl` with `--missing`),
`metrics.json`, `confusion_matrix.png`, `modality_weights.png` and `reliability.png` (the
confidence's reliability diagram, when the predictions carry one; `*_full.png` likewise);
on stdout the summary line and the evidence line, on stderr every collapse warning.
The folder is replaced as a whole once every file is written: files of an earlier evaluation
never sit beside this one's, and a killed evaluation leaves the previous folder intact.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from minigpt4.common.atomic_io import atomic_dir
from minigpt4.common.modalities import EXPERT_ORDER

logger = logging.getLogger(__name__)


def is_eval_output(path: Path) -> bool:
    """A file `write_outputs` writes (so a later evaluation into the same folder may replace it)."""
    name = path.name
    return path.is_file() and (name == "metrics.json" or name.endswith(".png")
                               or (name.startswith("predictions") and name.endswith(".jsonl")))


def write_outputs(
    out_dir: Path,
    gathered: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    expected_ids: Optional[Sequence[str]],
    labels: Sequence[str],
    missing: Sequence[str],
    meta: Mapping[str, Any],
    t0: float,
    grounding_reference: Optional[float] = None,
) -> dict[str, Any]:
    """Merge the ranks' records, score them, write predictions / metrics / plots; print the summary
    line, the evidence exact-match line (with golden evidence) and each collapse warning
    (`WARNING: ...` on stderr, and logged), so a collapsed model cannot pass unnoticed.
    `grounding_reference`: the split's annotated rationales' grounding
    (`faithfulness.annotated_rationale_grounding`), kept in each faithfulness block."""
    from minigpt4.evaluation import records
    from minigpt4.evaluation.calibration import calibration_from_records
    from minigpt4.evaluation.temperature import uncalibrated
    from minigpt4.evaluation.evidence import evidence_summary_line
    from minigpt4.evaluation.metrics import metric_drop, metrics_from_records, summary_line
    from minigpt4.evaluation.plots import plot_confusion_matrix, plot_modality_weights, plot_reliability

    with atomic_dir(out_dir, is_eval_output) as tmp:  # the folder is written as a whole, or not at all
        scored: dict[str, dict[str, Any]] = {}
        files: list[str] = []
        dropped = 0
        for cond, per_rank in gathered.items():
            recs, n_drop = records.merge_records(per_rank, expected_ids)
            dropped += n_drop
            suffix = "" if (cond == "missing" or not missing) else "_full"
            m = metrics_from_records(recs, labels, EXPERT_ORDER)
            if m.get("faithfulness") is not None:  # the reference the model's grounding is read against
                m["faithfulness"]["rationale_grounding_annotated"] = grounding_reference
            if meta.get("temperature"):  # the same clips as the head gave them, for the before/after
                m["calibration_uncalibrated"] = calibration_from_records(
                    uncalibrated(recs, meta["temperature"]["temperature"]), labels)
            scored[cond] = m
            what = f" without {'+'.join(missing)}" if cond == "missing" else (" (all modalities)" if missing else "")
            records.write_jsonl(tmp / f"predictions{suffix}.jsonl", recs)
            files.append(f"predictions{suffix}.jsonl")
            cm = m["confusion_matrix"]
            plot_confusion_matrix(cm["matrix"], cm["rows"], cm["cols"], tmp / f"confusion_matrix{suffix}.png",
                                  title=f"{meta['split']}{what}: confusion matrix (n={m['n_labeled']})")
            files.append(f"confusion_matrix{suffix}.png")
            per_class = m.get("modality_weights_per_class") or {}
            if any(v is not None for v in per_class.values()):
                plot_modality_weights(per_class, EXPERT_ORDER, tmp / f"modality_weights{suffix}.png",
                                      title=f"{meta['split']}{what}: mean modality weight per gold class")
                files.append(f"modality_weights{suffix}.png")
            else:
                logger.warning("no modality weights in the predictions: modality_weights%s.png not drawn", suffix)
            calibration = m.get("calibration")
            if calibration:
                plot_reliability(calibration["bins"], tmp / f"reliability{suffix}.png", ece=calibration["ece"],
                                 title=f"{meta['split']}{what}: confidence")
                files.append(f"reliability{suffix}.png")
        main = scored["missing"] if missing else scored["full"]
        metrics: dict[str, Any] = {**meta, "missing_modalities": list(missing), "label_names": list(labels), **main}
        if missing:
            metrics["full"] = scored["full"]
            metrics["drop"] = metric_drop(scored["full"], scored["missing"])
        metrics["n_repeats_dropped"] = dropped
        metrics["seconds"] = round(time.time() - t0, 3)
        if meta.get("predict_seconds"):
            metrics["clips_per_s"] = round(main["n_clips"] / meta["predict_seconds"], 3)
        metrics["files"] = files + [records.METRICS_FILE]
        records.write_json(tmp / records.METRICS_FILE, metrics)
    line = f"eval {meta['split']} ({main['n_clips']} clips"
    line += f", without {'+'.join(missing)}): " if missing else "): "
    line += summary_line(main)
    if missing:
        full_acc, drop = scored["full"]["accuracy"], metrics["drop"]["accuracy"]
        line += (f" | all modalities: accuracy {'n/a' if full_acc is None else f'{full_acc:.4f}'}, "
                 f"drop {'n/a' if drop is None else f'{drop:+.4f}'}")
    if metrics.get("clips_per_s"):
        line += f" | {metrics['clips_per_s']:.2f} clips/s"
    line += f" -> {out_dir}"
    print(line, flush=True)
    evidence_line = evidence_summary_line(main.get("evidence") or {})
    if evidence_line:
        print(evidence_line, flush=True)
    warnings = list(main["collapse_warnings"])
    if missing:
        warnings += [f"(all modalities) {w}" for w in scored["full"]["collapse_warnings"]]
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
        logger.warning("collapse check: %s", warning)
    return metrics
