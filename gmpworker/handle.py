"""Import path for ``GHandle``, which lives in ``runtime2`` as the base class of ``G``.

``go()`` and ``Runtime.submit()`` return the G record itself, typed as ``GHandle``,
so a spawn allocates one object instead of two.
"""

from __future__ import annotations

from .runtime2 import GHandle

__all__ = ["GHandle"]
