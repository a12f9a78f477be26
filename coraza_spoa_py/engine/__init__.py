"""The rule engine: libmodsecurity through our compiled cffi binding, the only package that
knows it exists (docs/architecture.md "engine").

Its public face: ``load_engine`` (an application's rules → ``ModSecEngine``, or
``RulesError``), the transactions it makes (``models.WafTransaction``), ``RUN_HERE`` (the
scheduler that runs each engine job on the calling thread), ``engine_version``,
``set_match_text`` and ``trim_heap``. The agent's scheduler, the native engine threads seen
from the gevent hub, is ``engine.engine_pool.EnginePool``: not imported here, so that loading
rules never imports gevent. The C sources it binds are in ``native/``.
"""

from __future__ import annotations

from coraza_spoa_py.engine.binding import (
    RUN_HERE,
    EngineError,
    NativePool,
    RunHere,
    engine_version,
    native_lock_factory,
    set_match_text,
    trim_heap,
)
from coraza_spoa_py.engine.ruleset import ModSecEngine, RulesError, load_engine
from coraza_spoa_py.engine.transaction import ModSecTransaction

__all__ = [
    "RUN_HERE",
    "EngineError",
    "ModSecEngine",
    "ModSecTransaction",
    "NativePool",
    "RulesError",
    "RunHere",
    "engine_version",
    "load_engine",
    "native_lock_factory",
    "set_match_text",
    "trim_heap",
]
