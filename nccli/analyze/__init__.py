"""Analysis: from rows to the metrics of ``docs/metrics.md``, in the order the data flows.

- ``config``: :class:`AnalyzeConfig` and its option checks;
- ``memory``: the in-memory row source (batches in hand), beside the feature file's reader (``nccli.io``);
- ``plan``: each layer's memory, and the layer groups that fit;
- ``passes``: the two passes over a source's rows (pass 1 class means, pass 2 everything centred on them),
  or this torchrun rank's rows;
- ``collectives``: the torchrun job (exact merges in rank order, the geometry broadcast);
- ``references``: ``--means-from`` (each file's reference and its class means);
- ``ood``: ``--ood`` (the out-of-distribution means);
- ``conventions``: the report's ``conventions`` metadata;
- the entry points: ``analysis`` (:func:`analyze_features`), ``outputs`` (:func:`write_analysis`, the
  report files published atomically), ``measure`` (:func:`measure_collapse`, batches in memory).

The math is in :mod:`nccli.metrics`; reading and writing results in :mod:`nccli.report`.
"""
