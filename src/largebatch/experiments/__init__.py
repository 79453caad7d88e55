"""The experiment layer: many runs from one spec, and the commands built on them.

- :mod:`~largebatch.experiments.spec`: the sweep spec (base config, grid, seeds, settings).
- :mod:`~largebatch.experiments.sweep`: ``largebatch sweep`` (child processes, manifest, resume).
- :mod:`~largebatch.experiments.demo`: ``largebatch demo`` (the small- vs large-batch gap).
- :mod:`~largebatch.experiments.bench`: ``largebatch bench`` (time per update, examples per s).

Training itself lives in :mod:`largebatch.engine`; the comparison protocol that picks a fix is
:mod:`largebatch.compare`; reports are :mod:`largebatch.report`.
"""
