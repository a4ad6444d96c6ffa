"""The class decision as a linear read-out of the experts' summaries, refitted from the training split.

Why: the classification head on the integrated context is trained jointly with everything
else and fits the training clips closely (eval-mode accuracy 0.89 on the shift corpus's train
split against 0.73-0.77 on its test split). Measured on eleven trained runs (both corpora,
test split), a multinomial logistic regression with a strong ridge, fitted afterwards on the
same run's expert summaries of the training split, was right more often than the head (mean
+0.013 at C 0.01, 7 of 11 runs higher; +0.020 at C 0.003, whose confidence is too low on the
demo: ECE 0.11 against 0.04 at 0.01): the summaries carry more than the head reads, and a linear
read-out with a strong ridge keeps that from overfitting. `model.decision: refit` makes it the
decision.

Like the content eraser it is fitted in closed form, never by gradient: the runner's
`refit_statistics` reads one epoch of training batches with the model in eval mode before step 1
and at the end of every epoch (before validation, which so selects the checkpoint by it, and
before the checkpoint, which saves it). Its input is every expert's summary where the expert
is present (zeros where not) and the six presence flags, standardised by the statistics of
that pass; `model.decision_refit_c` is scikit-learn's inverse ridge strength C. Before the
first refit it returns None and the head decides.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

MIN_ROWS = 8  # labelled rows a refit needs; with fewer the read-out stays as it was
MIN_SCALE = 1e-6  # a feature whose spread is below this (an expert never present) is left unscaled


def readout_features(summaries: Tensor, present: Tensor) -> Tensor:
    """[B, E * H + E]: each expert's summary [B, E, H] where present [B, E] (zeros elsewhere), then the flags."""
    mask = present.to(summaries.dtype)
    return torch.cat([(summaries * mask[..., None]).flatten(1), mask], dim=1).float()


class RefitReadout(nn.Module):
    """logits = ((f - mean) / scale) @ weight.T + bias over `readout_features`; buffers, so the
    checkpoint keeps the fit and DDP broadcasts rank 0's."""

    def __init__(self, num_experts: int, hidden_dim: int, num_classes: int, inverse_ridge: float) -> None:
        super().__init__()
        width = num_experts * (hidden_dim + 1)
        self.num_classes = num_classes
        self.inverse_ridge = float(inverse_ridge)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.register_buffer("weight", torch.zeros(num_classes, width))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))  # labelled rows of the last refit (0: none)
        self._collected: Optional[list[tuple[Tensor, Tensor]]] = None

    @property
    def fitted(self) -> bool:
        return bool(self.rows.item() > 0)

    def forward(self, summaries: Tensor, present: Tensor, emotion: Optional[Tensor] = None) -> Optional[Tensor]:
        """[B, C] logits from summaries [B, E, H] and present [B, E]; None before the first refit.
        During a refit it records the labelled rows (emotion [B], -1 = unknown) and returns None."""
        features = readout_features(summaries, present)
        if self._collected is not None:
            if isinstance(emotion, Tensor):
                labels = emotion.to(features.device).long()
                use = (labels >= 0) & (labels < self.num_classes)
                self._collected.append((features[use], labels[use]))
            return None
        if not self.fitted:
            return None
        return ((features - self.mean) / self.scale) @ self.weight.t() + self.bias

    @torch.no_grad()
    def refit(self, stack: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Read `batches` through `stack` (the evidence stack, in eval mode) and refit; returns
        rows, the read-out's accuracy on them and the head's (same rows, same pass)."""
        was_training = stack.training
        stack.eval()
        self._collected = []
        head_right = 0
        try:
            for samples in batches:
                out = stack(samples, None, compute_losses=False)
                emotion = samples.get("emotion")
                if isinstance(emotion, Tensor) and out.head_logits is not None:
                    labels = emotion.to(out.head_logits.device).long()
                    head_right += int(((out.head_logits.argmax(-1) == labels) & (labels >= 0)).sum())
            collected = self._collected
        finally:
            self._collected = None
            stack.train(was_training)
        n = sum(int(f.shape[0]) for f, _ in collected)
        if n < MIN_ROWS:
            return {"readout_rows": float(n), "readout_fitted": 0.0}
        features = torch.cat([f for f, _ in collected])
        labels = torch.cat([y for _, y in collected])
        accuracy = self.fit(features, labels)
        return {"readout_rows": float(n), "readout_train_accuracy": accuracy, "head_train_accuracy": head_right / n}

    @torch.no_grad()
    def fit(self, features: Tensor, labels: Tensor) -> float:
        """Fit the standardisation and an L2 multinomial logistic regression (`fit_logistic`) on
        features [N, F] and labels [N]. Returns the accuracy on the rows it was fitted on."""
        fit = fit_logistic(features, labels, self.num_classes, self.inverse_ridge)
        for name in ("mean", "scale", "weight", "bias"):
            getattr(self, name).copy_(getattr(fit, name).to(getattr(self, name).device))
        self.rows.fill_(int(features.shape[0]))
        return fit.accuracy


@dataclass
class LogisticFit:
    """logits = ((x - mean) / scale) @ weight.T + bias; `accuracy` on the rows it was fitted on."""

    mean: Tensor  # [F]
    scale: Tensor  # [F]
    weight: Tensor  # [C, F]
    bias: Tensor  # [C]
    accuracy: float


def fit_logistic(features: Tensor, labels: Tensor, num_classes: int, inverse_ridge: float) -> LogisticFit:
    """Standardise features [N, F] and fit an L2 multinomial logistic regression (scikit-learn,
    lbfgs, C = `inverse_ridge`) to labels [N] in [0, num_classes). A class absent from the labels
    gets a bias that never wins; with a single class seen, that class always wins."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = features.double().cpu().numpy()
    y = labels.cpu().numpy()
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale < MIN_SCALE, 1.0, scale)
    z = (x - mean) / scale
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -1e4)
    classes = np.unique(y)
    if len(classes) == 1:  # one class seen: it always wins
        bias[classes[0]] = 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=inverse_ridge, max_iter=2000).fit(z, y)
        coef, intercept = clf.coef_, clf.intercept_
        if len(classes) == 2:  # scikit-learn's binary form: one row for the second class
            coef = np.stack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        weight[clf.classes_] = coef
        bias[clf.classes_] = intercept
    as_float = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    logits = as_float(z) @ as_float(weight).t() + as_float(bias)
    return LogisticFit(as_float(mean), as_float(scale), as_float(weight), as_float(bias),
                       float((logits.argmax(-1).numpy() == y).mean()))
