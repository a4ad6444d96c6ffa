"""`hero-app` (and `python app.py`): load a run once, serve the demo page until Ctrl-C.

Why this order: the workspace exists and `GRADIO_TEMP_DIR` points into it before Gradio is
imported; the run loads once, before the server starts, so the first request does not wait for
it and a bad run is a one-line error at start rather than on the page. On exit (Ctrl-C or
SIGTERM) the workspace is removed with everything uploaded or extracted.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from minigpt4.app.args import AppOptions, parse_args
from minigpt4.app.limits import UploadLimits
from minigpt4.app.workspace import Workspace

logger = logging.getLogger(__name__)


def run_folder(opts: AppOptions) -> tuple[Path, Optional[Path]]:
    """(run folder, checkpoint or None for the run's best) for `--ckpt`: a run folder or a checkpoint in one."""
    from minigpt4.evaluation.records import run_dir_of

    ckpt = Path(opts.ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(f"--ckpt {ckpt} does not exist")
    run_dir = run_dir_of(ckpt)
    return run_dir, (None if run_dir == ckpt.resolve() else ckpt)


def load_session(opts: AppOptions) -> Any:
    """`InferenceSession.from_run` for `--ckpt`, with the extraction and device flags."""
    from minigpt4.inference.session import InferenceSession

    run_dir, checkpoint = run_folder(opts)
    return InferenceSession.from_run(run_dir, checkpoint=checkpoint, extract_config=opts.extract_config,
                                     extract_options=opts.extract_options, device=opts.device,
                                     batch_size=opts.batch_size)


def upload_block(session: Any) -> str:
    """Why uploads must stay off although the run has extraction settings ('' when they can run):
    checked at start (encoder widths against the model, from configs only), not at the first upload."""
    if not session.can_extract:
        return ""
    try:
        session.check_extraction()
    except ValueError as exc:
        logger.warning("uploads are off: %s", exc)
        return str(exc)
    return ""


def load_evaluation(eval_dir: Optional[Path], run_dir: Path) -> tuple[Any, dict[str, Path], str]:
    """(EvalFolder or None, {video_id: feature file}, a note on clips that cannot be re-analysed)."""
    from minigpt4.app.eval_browser import load_eval_folder
    from minigpt4.app.eval_clips import feature_folders, find_clip_features

    if eval_dir is None:
        return None, {}, ""
    folder = load_eval_folder(eval_dir)
    try:
        folders = feature_folders(run_dir)
    except FileNotFoundError as exc:
        return folder, {}, f"The evaluated clips cannot be re-analysed: {exc}."
    if not folders:
        return folder, {}, ("The evaluated clips cannot be re-analysed: the feature folder in the run's "
                            f"config.yaml does not exist from {Path.cwd()} (start the app where the run was trained).")
    files = find_clip_features((str(r["video_id"]) for r in folder.records), folders)
    lost = len(folder.records) - len(files)
    note = f"{lost} evaluated clip(s) have no feature file in {', '.join(map(str, folders))}." if lost else ""
    return folder, files, note


def _stop_on_sigterm() -> None:
    """SIGTERM ends the server as Ctrl-C does, so the workspace is still removed."""
    if threading.current_thread() is threading.main_thread():
        def raise_interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, raise_interrupt)


def serve(opts: AppOptions) -> None:
    """Build the page for `opts` and serve it until interrupted; the workspace goes with it."""
    workspace = Workspace.create()
    atexit.register(workspace.close)
    workspace.point_gradio_here()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline demo: no telemetry, no version check
    try:
        # the evaluation folder first: a wrong --eval_dir fails in a second, not after the model loads
        folder, clip_files, note = load_evaluation(opts.eval_dir, run_folder(opts)[0])
        session = load_session(opts)
        from minigpt4.app.page import build_page
        from minigpt4.app.service import DemoService

        limits = UploadLimits(opts.max_upload_mb, opts.max_duration_s)
        service = DemoService(session, limits, workspace, folder, clip_files, note, upload_block(session))
        demo = build_page(service)
        demo.queue(default_concurrency_limit=1)
        _stop_on_sigterm()
        print(f"hero-app: run {session.run_dir}; uploads {'on' if service.can_upload else 'off'} "
              f"({limits.describe()}); {len(clip_files)} evaluated clip(s); temp folder {workspace.root}", flush=True)
        demo.launch(server_name=opts.host, server_port=opts.port, max_file_size=limits.max_bytes,
                    share=False, inbrowser=False, show_error=True, ssr_mode=False, run_history=False,
                    footer_links=["gradio"])
    finally:
        workspace.close()


def _known_errors() -> tuple[type, ...]:
    """Errors that describe bad input (one line, no traceback)."""
    from minigpt4.common.checkpoint import CheckpointMismatchError
    from minigpt4.common.config import ConfigError

    return (CheckpointMismatchError, ConfigError, FileNotFoundError, ValueError, OSError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`hero-app`): 0 after a clean stop, 1 with a one-line error for bad input."""
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(opts)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # imports stay lazy: --help must not load torch or Gradio
        if opts.debug or not isinstance(exc, _known_errors()):
            raise
        print(f"hero-app: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
