"""The web demo (`hero-app`, minigpt4/app/): its browser-free logic, then the real page in Chromium.

The first tests need neither Gradio's server nor a browser: the evaluation browser's filters and
table on a small written predictions.jsonl, the upload limits on generated videos, the run's
feature folders, the service's answers with a stand-in session. The last one starts `app.py` on a
free port with a tiny trained run (tests/infer_utils.py), uploads a video through headless
Chromium (Selenium, the system's chromedriver: no driver download), and reads the page.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest

from minigpt4.app import eval_browser as eb
from minigpt4.app.args import parse_args
from minigpt4.app.eval_clips import feature_folders, find_clip_features, resolve_folder
from minigpt4.app.limits import UploadLimits, check_upload, video_duration
from minigpt4.app.workspace import GRADIO_ENV, Workspace
from minigpt4.evaluation.records import write_json, write_jsonl
from tests.infer_utils import LABELS, tiny_video_run  # noqa: F401 (module fixture)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # the system's browser and its driver (Debian packages)
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_CHROMIUM = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()
INSTALL_HINT = "install Chromium: apt-get install chromium chromium-driver"


# ----------------------------------------------------------------------- an eval folder
def _weights(missing: tuple[str, ...] = ()) -> dict[str, float]:
    names = ["motion", "audio", "au", "text", "visual", "synergy"]
    if "audio" in missing or "motion" in missing:
        missing = missing + ("synergy",)
    present = [n for n in names if n not in missing]
    return {n: (1.0 / len(present) if n in present else 0.0) for n in names}


def _record(vid: str, gold: Optional[str], pred: str, missing: tuple[str, ...] = (), conf: float = 0.8) -> dict[str, Any]:
    return {"video_id": vid, "gold_emotion": gold, "pred_emotion": pred,
            "correct": None if gold is None else gold == pred, "confidence": conf, "format_ok": pred != "unknown",
            "parse_error": None, "prediction_source": "report",
            "report": f"### Evidence Analysis\n- Visual: a frown in {vid}\n### Prediction\n{{\"emotion\": \"{pred}\"}}",
            "evidence": {"visual": f"a frown in {vid}", "audio": "" if "audio" in missing else "a raised voice"},
            "modality_weights": _weights(missing), "synergy_score": 0.5,
            "evidence_source": {"visual": "generated", "audio": "none" if "audio" in missing else "generated",
                                "au": "measured"},
            "transcript": f"words of {vid}",
            "golden_evidence": {"visual": "a deep frown"}, "head_emotion": pred, "head_confidence": conf,
            "confidence_source": "head", "label_probs": None}


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    out = tmp_path / "eval_test"
    out.mkdir()
    write_jsonl(out / "predictions.jsonl", [
        _record("c1", "happy", "happy"),
        _record("c2", "happy", "sad", missing=("audio",)),
        _record("c3", "sad", "sad", missing=("text",)),
        _record("c4", "angry", "unknown", conf=None),
        _record("c5", None, "angry"),
    ])
    write_json(out / "metrics.json", {"accuracy": 0.5, "weighted_f1": 0.4, "uar": 0.5, "format_compliance": 0.8,
                                      "confusion_matrix": {"rows": ["neutral", "angry", "happy", "sad"],
                                                           "cols": ["neutral", "angry", "happy", "sad", "unknown"],
                                                           "matrix": []}})
    return out


def test_eval_folder_filters_and_table(eval_dir: Path):
    folder = eb.load_eval_folder(eval_dir)
    assert folder.label_names == ["neutral", "angry", "happy", "sad"]  # from metrics.json, not the records
    assert folder.confusion_png is None and set(folder.by_id) == {"c1", "c2", "c3", "c4", "c5"}
    choices = eb.filter_choices(folder)
    assert choices["gold"] == ["all", "neutral", "angry", "happy", "sad"]
    assert choices["pred"][-1] == "unknown" and choices["missing"][:2] == ["any", "none"]

    def ids(**kw: str) -> list[str]:
        return [r["video_id"] for r in eb.filter_records(folder.records, eb.ClipFilter(**kw))]

    assert ids() == ["c1", "c2", "c3", "c4", "c5"]
    assert ids(gold="happy") == ["c1", "c2"]
    assert ids(pred="sad") == ["c2", "c3"]
    assert ids(outcome="correct") == ["c1", "c3"]
    assert ids(outcome="wrong") == ["c2", "c4"]  # the unlabelled c5 is neither
    assert ids(missing="none") == ["c1", "c4", "c5"]
    assert ids(missing="audio") == ["c2"]
    assert ids(gold="happy", outcome="wrong", missing="audio") == ["c2"]
    assert ids(gold="neutral") == []

    rows = eb.table_rows(eb.filter_records(folder.records, eb.ClipFilter(gold="happy")))
    assert rows == [["c1", "happy", "happy", "yes", "0.80", ""], ["c2", "happy", "sad", "no", "0.80", "audio"]]
    assert eb.table_rows([folder.by_id["c4"]])[0][4] == "" and eb.table_rows([folder.by_id["c5"]])[0][3] == ""
    assert len(eb.TABLE_HEADERS) == len(rows[0])
    assert "5 clips" in eb.metrics_summary(folder) and "accuracy 0.5000" in eb.metrics_summary(folder)


def test_a_clips_details_name_its_experts_and_missing_modalities(eval_dir: Path):
    folder = eb.load_eval_folder(eval_dir)
    rec = folder.by_id["c2"]
    rows = eb.evidence_rows(rec)
    assert [r[0] for r in rows] == ["motion", "audio", "au", "text", "visual", "synergy"]
    assert rows[4] == ["visual", "a frown in c2", "generated", "a deep frown", "0.250"]
    assert rows[1][2:] == ["none", "", "0.000"] and rows[2][2] == "measured" and rows[5][4] == "0.000"
    assert eb.evidence_rows({"video_id": "old"})[0] == ["motion", "", "", "", ""]  # a folder from before sources
    head = eb.clip_heading(rec)
    assert "c2" in head and "true **happy**" in head and "predicted **sad**" in head and "wrong" in head
    assert head.endswith("Transcript: words of c2")
    assert eb.missing_modalities(rec) == ["audio"]
    assert eb.missing_modalities({"modality_weights": None}) is None
    assert eb.missing_modalities({"modality_weights": {"audio": 0.5}}) == ["motion", "au", "text", "visual"]


def test_an_eval_folder_without_predictions_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="predictions.jsonl"):
        eb.load_eval_folder(tmp_path)
    (tmp_path / "predictions.jsonl").write_text('{"video_id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2"):
        eb.load_eval_folder(tmp_path)


# ----------------------------------------------------------------------- upload limits
def test_upload_limits_are_checked_before_extraction(tmp_path: Path):
    from minigpt4.extraction.synthetic import make_video

    video = make_video(tmp_path / "clip.mp4", seconds=2.0, fps=10, size=(64, 48), audio=None, seed=0)
    assert 1.8 <= video_duration(video) <= 2.3
    ok = UploadLimits(max_mb=5, max_duration_s=10)
    assert check_upload(video, ok) is None
    assert "lasts 2.0 s" in check_upload(video, UploadLimits(max_mb=5, max_duration_s=1.5))
    too_big = check_upload(video, UploadLimits(max_mb=0.001, max_duration_s=10))
    assert "MB" in too_big and "0.001 MB" in too_big
    assert check_upload(None, ok) == "Upload a video first."
    assert "gone" in check_upload(tmp_path / "nothing.mp4", ok)
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a video file" in check_upload(tmp_path / "notes.txt", ok)
    (tmp_path / "broken.mp4").write_bytes(os.urandom(4096))
    assert "cannot be read as a video" in check_upload(tmp_path / "broken.mp4", ok)
    assert UploadLimits(200, 120).max_bytes == 200 * 1024 * 1024


def test_command_line_defaults_and_errors(capsys):
    opts = parse_args(["--ckpt", "runs/x"])
    assert (opts.host, opts.port, opts.max_upload_mb, opts.max_duration_s, opts.device) == ("127.0.0.1", 7860, 200.0,
                                                                                              120.0, "auto")
    assert opts.eval_dir is None and opts.extract_options == ()
    for bad in (["--port", "0"], ["--max_upload_mb", "0"], ["--max_duration_s", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--ckpt", "runs/x", *bad])
        assert "must be" in capsys.readouterr().err


def test_help_loads_neither_torch_nor_gradio():
    code = ("import sys, runpy; sys.argv = ['app.py', '--help']\n"
            "try:\n    runpy.run_path('app.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: hero-app") and "--max_duration_s" in res.stdout
    assert "heavy: []" in res.stdout


def test_bad_paths_fail_in_one_line_before_the_model_loads(tmp_path: Path, capsys, monkeypatch):
    import tempfile

    from minigpt4.app.cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["--ckpt", str(tmp_path / "no_run")]) == 1
    assert "hero-app: error: --ckpt" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["--ckpt", str(tmp_path / "run"), "--eval_dir", str(tmp_path)]) == 1
    assert "holds no predictions.jsonl" in capsys.readouterr().err
    assert list(scratch.iterdir()) == []  # the workspace of each attempt is gone


# ----------------------------------------------------------------------- workspace, run folders
def test_workspace_is_one_temp_folder_removed_on_close(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv(GRADIO_ENV, "/elsewhere")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    ws = Workspace.create()
    assert ws.root.parent == tmp_path and ws.root.name.startswith("hero-app-")
    ws.point_gradio_here()
    assert os.environ[GRADIO_ENV] == str(ws.gradio_dir) and ws.gradio_dir.is_dir()
    job = ws.job_dir()
    (job / "x.npz").write_bytes(b"1")
    assert job.parent == ws.jobs_dir
    ws.close()
    assert not ws.root.exists() and os.environ[GRADIO_ENV] == "/elsewhere"


def test_evaluated_clips_are_found_through_the_runs_config(tmp_path: Path):
    repo = tmp_path / "clone"
    feats = repo / "data" / "features"
    feats.mkdir(parents=True)
    (feats / "c1.npz").write_bytes(b"x")
    run = repo / "output" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("datasets:\n  hero_dataset:\n    build_info:\n      images:\n"
                                     "        storage: data/features\n")
    assert feature_folders(run, cwd=repo) == [feats.resolve()]
    assert feature_folders(run, cwd=tmp_path) == [feats.resolve()]  # elsewhere: from the run's ancestors
    assert resolve_folder("no/such/folder", run, cwd=repo) is None
    assert find_clip_features(["c1", "c2"], [feats]) == {"c1": feats / "c1.npz"}
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        feature_folders(tmp_path)


# ----------------------------------------------------------------------- the service, no model
def _result(**kw: Any) -> Any:
    from minigpt4.inference.session import ClipResult

    base = dict(video_id="clip", source="clip.mp4", emotion="happy", confidence=0.75, confidence_source="head",
                label_probs={"happy": 0.75, "sad": 0.2, "angry": 0.05}, report="### Evidence Analysis\n- Visual: a smile",
                evidence={"visual": "a broad smile", "audio": "a bright voice"},
                evidence_source={"visual": "generated", "audio": "generated", "synergy": "measured", "au": "none"},
                modality_weights={"visual": 0.6, "audio": 0.3, "synergy": 0.1, "au": 0.0}, synergy_score=0.8,
                transcript="what a day", present_modalities=["audio", "visual"], timings={"extract_s": 1.5, "model_s": 0.5})
    base.update(kw)
    return ClipResult(**base)


class FakeSession:
    """Answers like InferenceSession without a model; records what it was asked."""

    label_names = list(LABELS)
    run_dir = Path("runs/fake")

    def __init__(self, can_extract: bool = True, fail: Optional[str] = None) -> None:
        self.can_extract = can_extract
        self.fail = fail
        self.calls: list[tuple[str, list[Path]]] = []

    def _answer(self, paths: list[Path]) -> tuple[list[Any], list[Any]]:
        from minigpt4.inference.session import InferenceFailure

        if self.fail:
            return [], [InferenceFailure(source=str(paths[0]), reason=self.fail)]
        return [_result(video_id=Path(paths[0]).stem)], []

    def predict_videos(self, paths, work_dir, progress=None):
        assert Path(work_dir).is_dir()
        self.calls.append(("videos", list(paths)))
        if progress:
            progress("extracting", 0.5)
        return self._answer(paths)

    def predict_features(self, paths, progress=None):
        self.calls.append(("features", list(paths)))
        return self._answer(paths)


def _service(tmp_path: Path, session: FakeSession, **kw: Any) -> Any:
    from minigpt4.app.service import DemoService

    return DemoService(session, UploadLimits(5, 10), Workspace(tmp_path / "ws_root"), **kw)


def test_service_checks_limits_then_answers_and_cleans_up(tmp_path: Path):
    pytest.importorskip("minigpt4.inference.session")
    from minigpt4.extraction.synthetic import make_video

    (tmp_path / "ws_root").mkdir()
    (tmp_path / "up").mkdir()
    video = make_video(tmp_path / "up" / "smile.mp4", seconds=2.0, fps=10, size=(64, 48), audio=None, seed=0)
    session = FakeSession()
    service = _service(tmp_path, session)
    seen: list[tuple[str, float]] = []
    view = service.ask_upload(str(video), progress=lambda m, f: seen.append((m, f)))
    assert session.calls == [("videos", [video])] and seen == [("extracting", 0.5)]
    assert view.has_result and "Prediction: happy" in view.prediction and "0.75" in view.prediction
    assert "sad 0.20" in view.prediction and "extraction 1.5 s" in view.prediction
    assert ["visual", "a broad smile", "generated", "0.600"] in view.evidence
    assert view.evidence[0][0] == "audio" and ["au", "", "none", "0.000"] in view.evidence  # EXPERT_ORDER
    assert view.weights[0] == ["audio", 0.3] and view.transcript == "what a day"
    assert view.report.startswith("### Evidence Analysis") and view.plain
    assert list(service.workspace.jobs_dir.iterdir()) == []  # the job folder is gone

    from minigpt4.app.presenter import prediction_markdown

    unparsed = prediction_markdown(_result(emotion=None, confidence=None, confidence_source=None))
    assert "Prediction: none" in unparsed and "classification head reads: **happy** 0.75, then sad 0.20" in unparsed
    assert "Next most likely" not in unparsed and "extraction" in unparsed
    assert "extraction" not in prediction_markdown(_result(timings={"extract_s": 0.0, "model_s": 0.2}))

    long_view = _service(tmp_path, session).ask_upload(str(video))
    assert long_view.has_result  # 2 s < 10 s
    service.limits = UploadLimits(5, 1.0)
    refused = service.ask_upload(str(video))
    assert not refused.has_result and "lasts" in refused.status and len(session.calls) == 2

    failing = _service(tmp_path, FakeSession(fail="no video stream"))
    view = failing.ask_upload(str(video))
    assert not view.has_result and "could not be analysed" in view.status and "no video stream" in view.status

    no_extract = _service(tmp_path, FakeSession(can_extract=False))
    assert not no_extract.can_upload and "cannot read new videos" in no_extract.ask_upload(str(video)).status


def test_service_analyses_evaluated_clips_by_their_feature_files(tmp_path: Path, eval_dir: Path):
    pytest.importorskip("minigpt4.inference.session")
    (tmp_path / "ws_root").mkdir()
    folder = eb.load_eval_folder(eval_dir)
    session = FakeSession(can_extract=False)
    service = _service(tmp_path, session, eval_folder=folder, clip_files={"c2": tmp_path / "c2.npz"},
                       clip_note="3 evaluated clip(s) have no feature file")
    assert service.clip_choices() == [("c2 (true: happy)", "c2")]
    view = service.ask_evaluated("c2")
    assert session.calls == [("features", [tmp_path / "c2.npz"])] and view.has_result
    assert "no feature file" in service.ask_evaluated("c1").status
    assert "Pick" in service.ask_evaluated(None).status


def test_page_without_extraction_settings_offers_only_the_evaluated_clips(tmp_path: Path, eval_dir: Path,
                                                                         monkeypatch):
    pytest.importorskip("minigpt4.inference.session")
    monkeypatch.setenv(GRADIO_ENV, str(tmp_path / "gradio"))
    from minigpt4.app.page import NO_EXTRACT, build_page

    (tmp_path / "ws_root").mkdir()
    service = _service(tmp_path, FakeSession(can_extract=False), eval_folder=eb.load_eval_folder(eval_dir),
                       clip_files={"c2": tmp_path / "c2.npz"})
    components = build_page(service).config["components"]
    kinds = [c["type"] for c in components]
    texts = json.dumps([c.get("props", {}) for c in components], default=str)
    assert "video" not in kinds and json.dumps(NO_EXTRACT)[1:-1] in texts and "c2 (true: happy)" in texts
    assert kinds.count("dataframe") == 3 and "tabs" in kinds  # ask evidence, browse table, clip evidence


# ----------------------------------------------------------------------- the page in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout:.0f} s")


def _chrome(profile_dir: Path) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200",
                f"--user-data-dir={profile_dir}"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))  # a given driver: no Selenium Manager


def _text(driver: Any, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, elem_id).text


def _wait_text(driver: Any, elem_id: str, needle: str, timeout: float) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: needle in _text(d, elem_id))
    return _text(driver, elem_id)


@pytest.mark.skipif(not HAVE_CHROMIUM, reason=INSTALL_HINT)  # decided before the tiny run is built
def test_page_in_a_headless_browser(tiny_video_run, tmp_path: Path):  # noqa: F811 (fixture)
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By

    run = tiny_video_run
    temp_root, cwd = tmp_path / "tmp", tmp_path / "cwd"  # the app's TMPDIR and working directory: both stay empty
    temp_root.mkdir()
    cwd.mkdir()
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(temp_root)}
    cmd = [sys.executable, str(REPO / "app.py"), "--ckpt", str(run.run_dir), "--eval_dir", str(run.eval_dir),
           "--port", str(port), "--device", "cpu", "--max_duration_s", "30"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    t0 = time.monotonic()
    try:
        url = f"http://127.0.0.1:{port}/"
        driver = _chrome(tmp_path / "chrome-profile")  # starts while the app loads its run
        _wait_for_server(url, proc, timeout=120)
        assert [p.name[:9] for p in temp_root.iterdir()] == ["hero-app-"]  # one workspace, nothing beside it
        t_up = time.monotonic()
        driver.get(url)
        _wait_text(driver, "ask-status", "Upload a video", 30)

        # upload a test-split video: extraction, the model, the whole result on the page
        video = run.videos[0]
        driver.find_element(By.CSS_SELECTOR, "#upload-video input[type=file]").send_keys(str(video))
        prediction = _wait_text(driver, "ask-prediction", "Prediction:", 60)
        expected = json.loads((run.eval_dir / "predictions.jsonl").read_text().splitlines()[0])
        assert expected["video_id"] == video.stem  # eval's record of the same clip, from the same extraction
        label = prediction.split("Prediction:", 1)[1].split()[0]
        if label == "none":  # the two-step LLM wrote no parsable prediction: the page gives the head's reading
            label = prediction.split("classification head reads:", 1)[1].split()[0]
            assert label == expected["head_emotion"], prediction
        assert label in LABELS, prediction
        page = driver.find_element(By.TAG_NAME, "body").text
        assert f"Analysed the video {video.name}" in page
        evidence = _text(driver, "ask-evidence")
        used = {src for name, src in (expected.get("evidence_source") or {}).items() if expected["evidence"].get(name)}
        assert "motion" in evidence and used and all(src in evidence for src in used), (used, evidence)
        sentences = [s for s in expected["evidence"].values() if s]
        assert sentences and all(s in evidence for s in sentences), (sentences, evidence)
        assert "Evidence Analysis" in _text(driver, "ask-report")
        driver.save_screenshot(str(tmp_path / "ask_upload.png"))

        # one of the run's evaluated clips (its feature file, found through the run's config.yaml)
        driver.find_element(By.ID, "analyse-clip").click()
        _wait_text(driver, "ask-status", "Analysed the evaluated clip", 30)

        # the evaluation browser: a row per clip; selecting one shows its report and evidence
        tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                   if "Browse an evaluation" in b.text)
        tab.click()
        table = _wait_text(driver, "browse-table", video.stem, 20)
        assert "test_d" in table
        cell = next(c for c in driver.find_elements(By.CSS_SELECTOR, "#browse-table [role=gridcell]")
                    if c.text.strip() == video.stem)
        cell.click()
        heading = _wait_text(driver, "clip-heading", video.stem, 20)
        assert f"predicted {expected['pred_emotion']}" in heading
        assert all(s in _text(driver, "clip-evidence") for s in sentences)
        driver.save_screenshot(str(tmp_path / "browse.png"))
        n_right = sum(json.loads(line)["correct"] is True
                      for line in (run.eval_dir / "predictions.jsonl").read_text().splitlines())
        next(e for e in driver.find_elements(By.CSS_SELECTOR, "#filter-outcome label") if e.text.strip() == "correct").click()
        _wait_text(driver, "browse-count", f"{n_right} of 2 clips", 20)
        assert (tmp_path / "ask_upload.png").stat().st_size > 10_000
        print(f"browser test: app up in {t_up - t0:.1f} s, page checks {time.monotonic() - t_up:.1f} s; "
              f"screenshots in {tmp_path}")
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert list(temp_root.iterdir()) == []  # the workspace (uploads, Gradio's cache, extraction) is gone
    assert list(cwd.iterdir()) == []  # and nothing was written where the app was started
