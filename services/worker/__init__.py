"""The worker service: a Celery app (``app``) and its tasks (``tasks``) on the gmpworker pool."""
