"""The C ``spoa-modsecurity`` agent's command line → ``Config``: no YAML, one application.

``-f FILE`` (repeatable, like the jcmoraisjr image's entrypoint, which turns its files into
``Include`` lines) becomes that application's directives, one ``Include`` per file in the given
order; ``-p`` a TCP bind on every address; ``-n`` the engine threads; ``-d`` debug logging;
``-m`` our cap on the frame size. Logs go to stderr, where the C agent wrote them.
docs/migrating-from-modsecurity-spoa.md and docs/operations.md describe the flags.

Must not parse flags (``options``) or start anything.
"""

from __future__ import annotations

import os

from coraza_spoa_py.config import ConfigError, ConfigProblem, LoadedConfig
from coraza_spoa_py.options import ModSecOptions
from coraza_spoa_py.settings import (
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_FRAME_SIZE,
    AppConfig,
    BindAddress,
    Config,
    LogConfig,
)

# the one application of a -f agent, also what `app` arguments route to (its default)
APPLICATION_NAME = "modsecurity"
# a marker for the generation field of LoadedConfig: not a coraza-spoa YAML generation
GENERATION = 0


def describe(options: ModSecOptions) -> str:
    """How the config is named in logs: ``-f a.conf -f b.conf``."""
    return " ".join(f"-f {path}" for path in options.files)


def load(options: ModSecOptions) -> LoadedConfig:
    """Build the config; raises ``ConfigError`` naming every file that cannot be read (the
    entrypoint of the C agent's image exits 1 on a missing file, so do we)."""
    problems = [
        ConfigProblem("", None, f"-f {path}: cannot read the ModSecurity config file")
        for path in options.files
        if not os.access(path, os.R_OK) or not os.path.isfile(path)
    ]
    if problems:
        raise ConfigError(describe(options), problems)
    files = [os.path.abspath(path) for path in options.files]
    directives = "".join(f'Include "{path}"\n' for path in files)
    config = Config(
        bind=BindAddress("tcp", "", options.port),
        applications=(
            AppConfig(
                name=APPLICATION_NAME,
                directives=directives,
                response_check=False,
                base_dir=os.path.dirname(files[0]),
            ),
        ),
        default_application=APPLICATION_NAME,
        log=LogConfig(level="debug" if options.debug else DEFAULT_LOG_LEVEL, file="/dev/stderr"),
        engine_threads=options.workers or None,
        # the C agent is one process whose -n threads are all it runs; -workers N still
        # starts several
        workers=1,
        max_frame_size=options.max_frame_size or DEFAULT_MAX_FRAME_SIZE,
        source_file=describe(options),
    )
    notices = []
    if options.capabilities:
        notices.append(
            f"-c {' -c '.join(options.capabilities)}: accepted and ignored; pipelining is "
            "negotiated with HAProxy"
        )
    if options.delay:
        notices.append(f"-t {options.delay}: accepted and ignored (a test delay of the C agent)")
    return LoadedConfig(config, GENERATION, tuple(notices))
