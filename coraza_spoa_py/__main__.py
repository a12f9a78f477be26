"""``python -m coraza_spoa_py`` is the same as the ``coraza-spoa-py`` command."""

from __future__ import annotations

from coraza_spoa_py.cli import main

raise SystemExit(main())
