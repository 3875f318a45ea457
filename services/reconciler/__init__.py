"""The reconciler service: recovers stranded orders and checks Redis stock against PostgreSQL.

``python -m services.reconciler`` runs it; :func:`run_once` runs one pass.
"""

from services.reconciler.reconcile import Reconciler, Report, run_once

__all__ = ["Reconciler", "Report", "run_once"]
