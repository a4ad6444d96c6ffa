"""What each expert's imperfect reading of its cues costs in accuracy, priced by the generator oracle.

The cue probe (`cue_probe.py`) says how well an expert's summary carries each hidden cue (R^2), but
not what a shortfall costs: a cue the label hardly depends on may be unread at no loss, and a
half-read one may cost much. This module prices it with what the synthetic generators' oracles
read: each clip's noise-free cue vector (`demo_oracles.cue_vector`, `shift_oracles.cue_vector`),
whose columns fall into one block per modality (`CUE_BLOCKS`). A standardised logistic regression on
it (the shift corpus's oracle; the demo's report uses gradient-boosted trees, the logistic
regression prices both corpora alike), fitted on the corpus's own train clips and scored on another
split, gives the accuracy the true cues allow with this much data. Then, one modality at a time, its
block is

- left out (zeroed): what that modality is worth to the oracle at all, and
- replaced by a ridge read-out of that expert's summary (cross-fitted on the train clips, so the
  oracle trains on read-outs as noisy as those it is scored on): what the expert's reading leaves.

The difference between the noise-free accuracy and the read-out one is what that expert's
extraction costs; all blocks read from their experts at once is a linear stand-in for the whole
evidence stack (the trained stack, reading all tokens non-linearly, may do better).
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

RIDGE_ALPHA = 1.0
ORACLE_C = 1.0  # as shift_oracles.fit_cue_oracle
CROSS_FIT_FOLDS = 5
# what format_worth_table says it priced: the generator's noise-free cues, or (cue_probe --frame) the
# frame oracle's reads of the files
NOISE_FREE_VIEW = "the noise-free cues (the oracle's view)"
FRAME_VIEW = "the cues read back from the files (the frame oracle's view)"


def oracle_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a standardised logistic regression (the shift oracle's classifier) fitted here."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=ORACLE_C, max_iter=3000))
    return float(clf.fit(x_train, y_train).score(x_test, y_test))


def read_block(summary_train: np.ndarray, block_train: np.ndarray, summary_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ridge read-out of a cue block from expert summaries: (cross-fitted train predictions, test predictions).

    summary_* [N, H], block_train [N, K] -> [N_train, K], [N_test, K]. The train predictions come
    from `CROSS_FIT_FOLDS` folds, each predicted by a ridge fitted on the others."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reg = make_pipeline(StandardScaler(), Ridge(alpha=RIDGE_ALPHA))
    folds = min(CROSS_FIT_FOLDS, len(block_train))
    train = cross_val_predict(reg, summary_train, block_train, cv=folds).reshape(len(block_train), -1)
    test = reg.fit(summary_train, block_train).predict(summary_test).reshape(len(summary_test), -1)
    return train, test


def modality_worth(cues: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                   summaries: Mapping[str, Mapping[str, np.ndarray]], present: Mapping[str, Mapping[str, np.ndarray]],
                   blocks: Mapping[str, slice], train: str = "train", test: str = "test") -> dict[str, Optional[float]]:
    """Oracle accuracies on `test`: `noise_free`, and per modality `<m>_left_out` and `<m>_from_expert`,
    then `all_from_experts`.

    cues[split] [N, F] noise-free cue vectors; labels[split] [N]; summaries[split][m] [N, H] the
    expert summaries of modality m; present[split][m] [N] bool. A block is read only on the clips where
    its modality is present (elsewhere the cue vector already holds zeros). A modality with fewer than
    two present train clips keeps its true block (its `_from_expert` is None)."""
    x_train, x_test = np.asarray(cues[train], dtype=np.float64), np.asarray(cues[test], dtype=np.float64)
    y_train, y_test = np.asarray(labels[train]), np.asarray(labels[test])
    out: dict[str, Optional[float]] = {"noise_free": oracle_accuracy(x_train, y_train, x_test, y_test)}
    all_train, all_test = x_train.copy(), x_test.copy()
    for modality, cols in blocks.items():
        left_train, left_test = x_train.copy(), x_test.copy()
        left_train[:, cols] = 0.0
        left_test[:, cols] = 0.0
        out[f"{modality}_left_out"] = oracle_accuracy(left_train, y_train, left_test, y_test)
        on_train = np.asarray(present[train][modality], dtype=bool)
        on_test = np.asarray(present[test][modality], dtype=bool)
        if on_train.sum() < 2 or not on_test.any():
            out[f"{modality}_from_expert"] = None
            continue
        pred_train, pred_test = read_block(np.asarray(summaries[train][modality])[on_train], x_train[on_train][:, cols],
                                           np.asarray(summaries[test][modality])[on_test])
        read_train, read_test = x_train.copy(), x_test.copy()
        for this_block, every_block, on, pred in ((read_train, all_train, on_train, pred_train),
                                                  (read_test, all_test, on_test, pred_test)):
            where = (np.flatnonzero(on)[:, None], np.arange(cols.start, cols.stop)[None])
            this_block[where] = pred
            every_block[where] = pred
        out[f"{modality}_from_expert"] = oracle_accuracy(read_train, y_train, read_test, y_test)
    out["all_from_experts"] = oracle_accuracy(all_train, y_train, all_test, y_test)
    return out


def format_worth_table(result: Mapping[str, Optional[float]], blocks: Mapping[str, slice],
                       view: str = NOISE_FREE_VIEW) -> str:
    """A plain-text table of `modality_worth`: per modality the oracle left without it, with it read
    from its expert, and the cost of that reading (all cues minus read); `view` names the cues priced."""
    def num(v: Optional[float]) -> str:
        return "    -" if v is None else f"{v:5.3f}"

    base = result["noise_free"]
    lines = [f"logistic regression on {view}: {num(base)}",
             f"{'modality':<9}{'left out':>9}{'from expert':>13}{'cost':>7}"]
    for m in blocks:
        read = result.get(f"{m}_from_expert")
        cost = None if read is None or base is None else base - read
        lines.append(f"{m:<9}{num(result.get(f'{m}_left_out')):>9}{num(read):>13}"
                     f"{'    -' if cost is None else f'{cost:+.3f}':>7}")
    lines.append(f"all cues read from their experts: {num(result.get('all_from_experts'))}")
    return "\n".join(lines)
