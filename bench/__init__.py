"""``make bench``: the agent through a real HAProxy next to the bare engine, overload, soak and
profile. Run as ``python -m bench``; docs/performance.md describes the method and the results.

Not part of the product and not imported by it; not part of ``make test`` either (only its
pure report code has unit tests).
"""

from __future__ import annotations
