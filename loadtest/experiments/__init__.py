"""The architecture's claims, measured side by side: ``python -m loadtest experiments``.

Each experiment runs its variants (A/B or more) under the same load and states a verdict
computed from the figures; :mod:`loadtest.experiments.runner` runs them and
:mod:`loadtest.experiments.report` writes one report for all.
"""
