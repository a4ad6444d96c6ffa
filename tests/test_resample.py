"""window_means: per-window means against a direct loop, in time order, gaps left out."""
from __future__ import annotations

import numpy as np
import pytest

from minigpt4.extraction.resample import window_means


def test_matches_a_direct_loop_for_unsorted_timestamps() -> None:
    rng = np.random.default_rng(0)
    times = rng.uniform(0.0, 5.0, size=200)
    times[times // 1 == 2] += 1.5  # nothing in [2, 3) s: that window is left out
    values = rng.standard_normal((200, 6)).astype(np.float32)
    out = window_means(values, times, fps=1.0, duration=5.0)
    expected = [values[(times >= k) & (times < k + 1)].mean(axis=0) for k in range(5) if ((times >= k) & (times < k + 1)).any()]
    assert out.dtype == np.float32 and out.shape == (4, 6)
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_duration_caps_the_last_window_and_bad_input_is_refused() -> None:
    values = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = window_means(values, np.array([0.0, 0.5, 1.0, 1.02]), fps=1.0, duration=1.0)  # 1.0 s joins window 0
    np.testing.assert_allclose(out, [values.mean(axis=0)])
    assert window_means(np.zeros((0, 3)), np.zeros(0), fps=10.0).shape == (0, 3)
    with pytest.raises(ValueError, match="fps must be > 0"):
        window_means(values, np.zeros(4), fps=0.0)
    with pytest.raises(ValueError, match="timestamps"):
        window_means(values, np.zeros(3), fps=1.0)
