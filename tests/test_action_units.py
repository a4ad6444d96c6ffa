"""OpenFace 2.0 AU CSV reader, resampling and binary runner (minigpt4/extraction/action_units.py)."""
from __future__ import annotations

import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt4.extraction.action_units import (
    AU_COLUMNS,
    AU_DIM,
    AU_INTENSITY_COLUMNS,
    AU_PRESENCE_COLUMNS,
    OpenFaceError,
    find_openface_csv,
    read_openface_csv,
    resample_track,
    run_openface,
)
from tests.media_utils import openface_header, write_openface_csv


def au_vector(seed: float) -> np.ndarray:
    """Distinct value per column: column j holds seed + j / 100 (presences too, to check the order)."""
    return seed + np.arange(AU_DIM) / 100.0


def test_column_layout_is_openface_order():
    assert AU_DIM == 35 and len(AU_INTENSITY_COLUMNS) == 17 and len(AU_PRESENCE_COLUMNS) == 18
    assert AU_COLUMNS[0] == "AU01_r" and AU_COLUMNS[16] == "AU45_r"
    assert AU_COLUMNS[17] == "AU01_c" and AU_COLUMNS[-2] == "AU28_c" and AU_COLUMNS[-1] == "AU45_c"


def test_reader_keeps_order_and_drops_bad_frames(tmp_path):
    rows = [
        dict(frame=1, face_id=0, timestamp=0.00, confidence=0.98, success=1, aus=au_vector(1)),
        dict(frame=2, face_id=0, timestamp=0.04, confidence=0.98, success=0, aus=au_vector(2)),  # lost
        dict(frame=3, face_id=0, timestamp=0.08, confidence=0.50, success=1, aus=au_vector(3)),  # unsure
        dict(frame=4, face_id=0, timestamp=0.12, confidence=0.90, success=1, aus=au_vector(4)),
    ]
    track = read_openface_csv(write_openface_csv(tmp_path / "clip.csv", rows), min_confidence=0.8)
    assert track.values.shape == (2, 35) and track.values.dtype == np.float32
    np.testing.assert_allclose(track.values[0], au_vector(1), atol=1e-5)
    np.testing.assert_allclose(track.values[1], au_vector(4), atol=1e-5)
    np.testing.assert_allclose(track.timestamps, [0.0, 0.12])
    assert (track.rows_total, track.rows_dropped) == (4, 2)
    # A lower threshold keeps the unsure frame, never the lost one.
    assert read_openface_csv(tmp_path / "clip.csv", min_confidence=0.4).values.shape == (3, 35)


def test_reader_picks_most_confident_face_per_frame(tmp_path):
    rows = [
        dict(frame=1, face_id=0, timestamp=0.0, confidence=0.85, success=1, aus=au_vector(1)),
        dict(frame=1, face_id=1, timestamp=0.0, confidence=0.95, success=1, aus=au_vector(5)),
        dict(frame=2, face_id=0, timestamp=0.5, confidence=0.99, success=1, aus=au_vector(2)),
        dict(frame=2, face_id=1, timestamp=0.5, confidence=0.97, success=0, aus=au_vector(6)),
    ]
    track = read_openface_csv(write_openface_csv(tmp_path / "multi.csv", rows))
    np.testing.assert_allclose(track.values[:, 0], [5.0, 2.0], atol=1e-5)


def test_resample_means_each_window_and_skips_empty_ones(tmp_path):
    rows = []
    for i, t in enumerate([0.1, 0.6, 1.2, 1.7, 3.3]):  # nothing tracked in [2, 3)
        rows.append(dict(frame=i + 1, face_id=0, timestamp=t, confidence=0.9, success=1, aus=au_vector(i)))
    track = read_openface_csv(write_openface_csv(tmp_path / "r.csv", rows))
    out = resample_track(track, fps=1.0, duration=4.0)
    assert out.shape == (3, 35)
    np.testing.assert_allclose(out[0], (au_vector(0) + au_vector(1)) / 2, atol=1e-5)
    np.testing.assert_allclose(out[1], (au_vector(2) + au_vector(3)) / 2, atol=1e-5)
    np.testing.assert_allclose(out[2], au_vector(4), atol=1e-5)
    assert resample_track(track, fps=None).shape == (5, 35)


def test_reader_errors_name_file_and_problem(tmp_path):
    bad = tmp_path / "noau.csv"
    bad.write_text("frame, face_id, timestamp, confidence, success, AU01_r\n1, 0, 0, 0.9, 1, 0.5\n")
    with pytest.raises(OpenFaceError, match=r"noau\.csv.*missing column\(s\) AU02_r"):
        read_openface_csv(bad)
    rows = [dict(frame=1, face_id=0, timestamp=0.0, confidence=0.9, success=1)]
    path = write_openface_csv(tmp_path / "nan.csv", rows)
    text = path.read_text().splitlines()
    header = [h.strip() for h in text[0].split(",")]
    cells = text[1].split(", ")
    cells[header.index("AU12_r")] = "abc"
    path.write_text(text[0] + "\n" + ", ".join(cells) + "\n")
    with pytest.raises(OpenFaceError, match=r"line 2, column AU12_r: 'abc'"):
        read_openface_csv(path)
    with pytest.raises(OpenFaceError, match="not found"):
        read_openface_csv(tmp_path / "absent.csv")
    assert find_openface_csv(tmp_path, "nan") == path and find_openface_csv(tmp_path, "zzz") is None


def _fake_openface(tmp_path: Path, body: str) -> Path:
    """An executable standing in for OpenFace's FeatureExtraction (same command line)."""
    script = tmp_path / "FeatureExtraction"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_run_openface_reads_what_the_binary_wrote(tmp_path):
    header = ", ".join(openface_header())
    n = len(openface_header())
    body = f"""
import sys, pathlib
args = sys.argv[1:]
video = pathlib.Path(args[args.index('-f') + 1]); out = pathlib.Path(args[args.index('-out_dir') + 1])
assert '-aus' in args
row = ['1', '0', '0.0', '0.97', '1'] + ['0.5'] * ({n} - 5)
(out / (video.stem + '.csv')).write_text({header!r} + '\\n' + ', '.join(row) + '\\n')
"""
    binary = _fake_openface(tmp_path, body)
    video = tmp_path / "clip_7.mp4"
    video.write_bytes(b"x")
    csv_path = run_openface(video, binary, out_dir=tmp_path / "of")
    assert csv_path == tmp_path / "of" / "clip_7.csv"
    track = read_openface_csv(csv_path)
    assert track.values.shape == (1, 35) and np.allclose(track.values, 0.5)


def test_run_openface_failure_reports_output(tmp_path):
    binary = _fake_openface(tmp_path, "import sys\nprint('Could not open the video', file=sys.stderr)\nsys.exit(3)\n")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(OpenFaceError, match=r"exited with 3.*Could not open the video"):
        run_openface(video, binary, out_dir=tmp_path / "of")
    with pytest.raises(OpenFaceError, match="binary not found"):
        run_openface(video, tmp_path / "nope" / "FeatureExtraction")
