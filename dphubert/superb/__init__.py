"""SUPERB evaluation of dphubert models with s3prl's own downstream code.

- ``tasks``: the SUPERB tasks we run (s3prl downstream, shipped config, metric, corpus variables).
- ``corpora``: corpus paths from a recipe's ``db.sh``; ``sidefiles``: the lists s3prl's tasks need that the
  corpora lack; ``subsets``: capped views of a corpus for the quick mode.
- ``configs``: the shipped downstream configs (``configs/*.yaml``), quick (demo) or full step counts,
  resolved into an experiment dir.
- ``running``: s3prl's ``run_downstream`` run in this process with our upstream registered;
  ``feature_cache``: the ``dphubert_cached`` upstream (features memoised per waveform, quick mode).
- ``ctc_corpora``: the LibriPhone dataset of s3prl's ``ctc`` task (missing from the pip package).
- ``results``: metric parsing, ``RESULTS.md``, ``results.json`` and the bar chart.
- ``stage``: train + evaluate every model x task (recipe stage 5). ``errors.SuperbError``: one-line errors.

CLIs: ``python -m dphubert.bin.superb``, ``python -m dphubert.bin.superb_stage``,
``python -m dphubert.bin.run_with_upstream``.
"""
