"""The Gradio page: two tabs laid out over a `DemoService`, each callback a thin mapping.

Gradio is imported only here (and after `Workspace.point_gradio_here`, see `cli.py`). Element ids
(`elem_id`) name the parts a user or a test looks for: `ask-status`, `ask-prediction`,
`ask-evidence`, `browse-table`, `clip-report`, ...

No `from __future__ import annotations` here: Gradio finds the `gr.SelectData` argument of a
callback from its evaluated annotation.
"""
import logging
from typing import TYPE_CHECKING, Any, Callable

from minigpt4.app import eval_browser as eb
from minigpt4.common.modalities import EXPERT_ORDER
from minigpt4.app.presenter import EVIDENCE_HEADERS, WEIGHT_HEADERS
from minigpt4.app.service import ClipView, DemoService

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger(__name__)
MODEL_QUEUE = "model"  # one concurrency group: the model answers one request at a time
NO_EXTRACT = ("This run was trained on feature files without extraction settings, so it cannot turn a new "
              "video into features. It can still analyse the clips it was evaluated on (below).")


def _frame(rows: list[list[Any]], headers: tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(headers))


def _blockquote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines()) if text else ""


def _outputs(view: ClipView) -> tuple[Any, ...]:
    """A ClipView in the order of `_ask_tab`'s outputs."""
    transcript = f"**Transcript**\n\n{_blockquote(view.transcript)}" if view.has_result else ""
    return (view.status, view.prediction, _frame(view.weights, WEIGHT_HEADERS), transcript,
            _frame(view.evidence, EVIDENCE_HEADERS), view.report, view.plain)


def _guarded(call: Callable[..., ClipView]) -> Callable[..., ClipView]:
    """An unexpected error becomes a status line on the page (and a logged traceback)."""
    def run(*args: Any, **kwargs: Any) -> ClipView:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the page must answer, whatever broke
            logger.exception("request failed")
            return ClipView(status=f"**Error:** {type(exc).__name__}: {exc}")
    return run


def _ask_tab(gr: Any, service: DemoService) -> None:
    choices = service.clip_choices()
    with gr.Row():
        with gr.Column(scale=1):
            video = upload_btn = clip = clip_btn = None
            if service.can_upload:
                gr.Markdown(f"Upload a video ({service.limits.describe()}): its features are extracted with "
                            "the run's settings, then the model reads them.")
                video = gr.Video(label="Video", sources=["upload"], elem_id="upload-video")
                upload_btn = gr.Button("Analyse the uploaded video", variant="primary", elem_id="analyse-upload")
            else:
                note = f"New videos are off: {service.upload_block}" if service.upload_block else NO_EXTRACT
                gr.Markdown(note, elem_id="no-extract-note")
            if choices:
                clip = gr.Dropdown(choices=choices, value=choices[0][1], elem_id="eval-clip",
                                   label="One of the run's evaluated clips")
                clip_btn = gr.Button("Analyse this clip", elem_id="analyse-clip")
            else:
                why = service.clip_note or "Start the app with --eval_dir RUN/eval_test to pick evaluated clips."
                gr.Markdown(why, elem_id="no-clips-note")
        with gr.Column(scale=2):
            hint = "Upload a video or pick a clip." if service.can_upload else "Pick a clip."
            status = gr.Markdown(hint, elem_id="ask-status")
            prediction = gr.Markdown(elem_id="ask-prediction")
            chart = gr.BarPlot(_frame([], WEIGHT_HEADERS), x="expert", y="weight", y_lim=[0, 1],
                               title="Attention weight per expert", elem_id="ask-weights", sort=list(EXPERT_ORDER))
    transcript = gr.Markdown(elem_id="ask-transcript")
    evidence = gr.Dataframe(_frame([], EVIDENCE_HEADERS), label="Evidence by expert", interactive=False,
                            wrap=True, elem_id="ask-evidence")
    report = gr.Markdown(elem_id="ask-report")
    with gr.Accordion("The whole result as text", open=False):
        plain = gr.Textbox(show_label=False, lines=12, interactive=False, buttons=["copy"], elem_id="ask-plain")
    outputs = [status, prediction, chart, transcript, evidence, report, plain]
    queue = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}

    def on_upload(path: Any, progress: Any = gr.Progress()) -> tuple[Any, ...]:
        view = _guarded(service.ask_upload)(path, lambda msg, frac: progress(frac, desc=msg))
        return _outputs(view)

    def on_clip(video_id: Any, progress: Any = gr.Progress()) -> tuple[Any, ...]:
        view = _guarded(service.ask_evaluated)(video_id, lambda msg, frac: progress(frac, desc=msg))
        return _outputs(view)

    if video is not None:  # analysed as soon as the upload lands; the button analyses it again
        video.upload(on_upload, inputs=video, outputs=outputs, **queue)
        upload_btn.click(on_upload, inputs=video, outputs=outputs, **queue)
    if clip is not None:
        clip_btn.click(on_clip, inputs=clip, outputs=outputs, **queue)


def _confusion_image(folder: eb.EvalFolder) -> Any:
    """The PNG as pixels: Gradio then serves its own copy from the workspace, never the eval folder."""
    from PIL import Image

    with Image.open(folder.confusion_png) as img:
        return img.convert("RGB")


def _browse_tab(gr: Any, service: DemoService) -> None:
    folder = service.eval_folder
    if folder is None:
        gr.Markdown("No evaluation folder: start the app with `--eval_dir RUN/eval_test` (what hero-eval wrote).",
                    elem_id="no-eval-note")
        return
    gr.Markdown(eb.metrics_summary(folder), elem_id="browse-summary")
    choices = eb.filter_choices(folder)
    with gr.Row():
        with gr.Column(scale=1):
            if folder.confusion_png is None:
                gr.Markdown("This folder has no confusion_matrix.png.")
            else:
                gr.Image(_confusion_image(folder), label="Confusion matrix (rows: true, columns: predicted)",
                         interactive=False, format="png", buttons=["download", "fullscreen"],
                         elem_id="confusion-matrix")
        with gr.Column(scale=2):
            with gr.Row():
                gold = gr.Dropdown(choices["gold"], value=eb.ALL, label="True class", elem_id="filter-gold")
                pred = gr.Dropdown(choices["pred"], value=eb.ALL, label="Predicted class", elem_id="filter-pred")
                outcome = gr.Radio(choices["outcome"], value=eb.ALL, label="Outcome", elem_id="filter-outcome")
                missing = gr.Dropdown(choices["missing"], value=eb.MISSING_ANY, label="Missing modality",
                                      elem_id="filter-missing")
            count = gr.Markdown(f"{len(folder.records)} of {len(folder.records)} clips; select a row for its report.",
                                elem_id="browse-count")
            table = gr.Dataframe(_frame(eb.table_rows(folder.records), eb.TABLE_HEADERS), interactive=False,
                                 max_height=420, elem_id="browse-table")
    heading = gr.Markdown(elem_id="clip-heading")
    evidence = gr.Dataframe(_frame([], eb.EVIDENCE_HEADERS), label="Evidence by expert", interactive=False,
                            wrap=True, elem_id="clip-evidence")
    report = gr.Markdown(elem_id="clip-report")

    def on_filter(g: str, p: str, o: str, m: str) -> tuple[Any, str]:
        shown = eb.filter_records(folder.records, eb.ClipFilter(g, p, o, m))
        return (_frame(eb.table_rows(shown), eb.TABLE_HEADERS),
                f"{len(shown)} of {len(folder.records)} clips; select a row for its report.")

    def on_select(evt: gr.SelectData) -> tuple[str, Any, str]:
        row = evt.row_value or []
        record = folder.by_id.get(str(row[0])) if row else None
        if record is None:
            return "Select a row of the table.", _frame([], eb.EVIDENCE_HEADERS), ""
        from minigpt4.app.presenter import report_markdown

        return (eb.clip_heading(record), _frame(eb.evidence_rows(record), eb.EVIDENCE_HEADERS),
                report_markdown(record.get("report")))

    filters = [gold, pred, outcome, missing]
    for widget in filters:
        widget.change(on_filter, inputs=filters, outputs=[table, count])
    table.select(on_select, inputs=None, outputs=[heading, evidence, report])


def build_page(service: DemoService, title: str = "HERO demo") -> "gr.Blocks":
    """The whole page; `launch` it (see `cli.py` for the settings)."""
    import gradio as gr

    labels = ", ".join(service.session.label_names)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {title}\nRun `{service.session.run_dir.name}`; it answers with one of: {labels}.")
        with gr.Tabs():
            with gr.Tab("Ask about a video", id="ask"):
                _ask_tab(gr, service)
            with gr.Tab("Browse an evaluation", id="browse"):
                _browse_tab(gr, service)
    return demo
