"""The compiled part of the engine binding (``msc_glue.c``), built by ``build.py``."""
