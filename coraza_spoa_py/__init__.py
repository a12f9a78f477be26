"""coraza-spoa-py: a WAF agent for HAProxy's SPOE, running ModSecurity rules with libmodsecurity.

This module imports nothing on purpose: ``cli`` must be able to monkey-patch with gevent
before any other module (socket, threading, ssl) is imported.
"""

from __future__ import annotations

__version__ = "0.1.0"
