"""Synthetic HERO corpora, generated from a seed in seconds, and the baselines to judge a model by.

Both corpora are written in the on-disk format of real data (`<out>/features/<video_id>.npz`
through `minigpt4.datasets.feature_io`, `<out>/annotations.json` as README "Your own data"
describes), plus the hidden state behind every clip (`<out>/latents.json`, never loaded by
the dataset) for oracles and tests:

- the demo (`demo`, `demo_cues`, `demo_evidence`, `demo_oracles`; `scripts/make_demo_data.py`):
  the README's default job. Each modality shows only part of a clip's hidden emotional state,
  so the emotion can only be read by combining them; it proves on a CPU that the pipeline
  learns to fuse evidence;
- the shift corpus (`shift`, `shift_cues`, `shift_evidence`, `shift_oracles`;
  `scripts/make_shift_data.py`): the same layout and labels built differently (other dims and
  encoders, skewed priors, bursts anywhere, answer-stating and partial evidence), to check
  that a training recipe tuned on the demo generalises rather than learning the demo's
  mechanisms.

`common` holds what both generators share; `baselines` the pooled logistic-regression
references (mean-pool, pooled statistics) that a HERO result on either corpus is held against.
"""
