"""`hero-app`: a local web demo of a trained HERO run (layer 7, above `inference`).

Two tabs: "Ask about a video" (a new upload when the run can extract features, or one of the
run's evaluated clips) and "Browse an evaluation" (an `eval_<split>/` folder: confusion matrix,
a filterable table of clips, each clip's report and evidence).

Modules, one job each: `args` (the command line), `limits` (upload size and duration checks),
`workspace` (the one temp folder the app writes to), `eval_browser` (predictions.jsonl as
filterable rows), `eval_clips` (the feature file of an evaluated clip, through the run's
config), `presenter` (a `ClipResult` as page values), `service` (the loaded run's answers to
the page, as plain calls), `page` (the Gradio layout and its callbacks), `cli` (`main`).
Everything but `page` and `cli` works without Gradio.
"""
