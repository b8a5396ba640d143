"""Reconstruction-only probes of representations: ``python -m mwm.probe`` and
``benchmarks/small_objects.py`` (docs/PROBES.md).

Modules, in the order data flows through them: ``sources`` (frames), ``annotations``
(object boxes and state variables), ``frames`` (episode-grouped data sets), ``methods``
(the representations), ``experiment`` (train and score), ``metrics`` and ``linear``
(the scores), ``stats`` (seeds), ``tables``, ``figures`` and ``report`` (outputs),
``suite`` (the benchmark's runs).
"""
