"""The three coraza-spoa config generations: detection by shape, and Gen1/Gen2 → Gen3 shape.

docs/compatibility.md "Config generations" (the generations and their mapping), "Gen2 keys" and
"Gen1 keys". The converters work on schema-valid data only and return, besides the Gen3-shaped
dict, where each new path came from, so a cross-field problem still names the user's own key and
line. A key the old file leaves out stays out, so it gets the ``settings`` default as a Gen3 file
would.

Must not validate or build dataclasses: ``config`` does that, once, for every generation.
"""

from __future__ import annotations

from typing import Any

GEN1, GEN2, GEN3 = 1, 2, 3
GENERATION_NAMES = {
    GEN1: "Gen1 (coraza-spoa 2022, `log:` + `spoa:`)",
    GEN2: "Gen2 (coraza-spoa v0.1-experimental, `applications:` map)",
    GEN3: "Gen3 (coraza-spoa v0.2+, `applications:` list)",
}
Path = tuple[str | int, ...]
PathMap = dict[Path, Path]
# Gen1 had a single WAF; it becomes this application, also the default one
GEN1_APP_NAME = "default"
# Gen1 `log.level` and Gen2's zap app loggers defaulted to warn (docs/compatibility.md "Gen2 keys",
# "Gen1 keys")
LEGACY_LOG_LEVEL = "warn"
# zap's level words (Gen2 app loggers); anything else meant info
_ZAP_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "error": "error"}
_ZAP_LEVELS |= {"dpanic": "panic", "panic": "panic", "fatal": "fatal"}


def detect_generation(data: dict[str, Any]) -> int:
    """Gen2 has an ``applications`` map, Gen3 a list; Gen1 has ``spoa``/``log`` and no apps."""
    if "applications" in data:
        return GEN2 if isinstance(data["applications"], dict) else GEN3
    if "spoa" in data or "log" in data:
        return GEN1
    return GEN3


def format_path(path: Path) -> str:
    """``("applications", 0, "name")`` → ``applications[0].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _include_lines(files: list[str]) -> list[str]:
    # ModSecurity's Include takes one path; quote it when it has blanks
    return [f'Include "{name}"' if " " in name else f"Include {name}" for name in files]


def gen1_to_gen3(data: dict[str, Any]) -> tuple[dict[str, Any], PathMap, list[str]]:
    """``log:`` + ``spoa:`` → one application ``default`` (docs/compatibility.md "Gen1 keys")."""
    log = data.get("log") or {}
    spoa = data["spoa"]
    app: dict[str, Any] = {
        "name": GEN1_APP_NAME,
        "directives": "\n".join(_include_lines(spoa.get("include", []))),
        # Gen1 processed coraza-res for every request: responses were always checked
        "response_check": True,
    }
    if "transaction_ttl" in spoa:
        app["transaction_ttl_ms"] = spoa["transaction_ttl"]
    if "transaction_active_limit" in spoa:
        app["transaction_active_limit"] = spoa["transaction_active_limit"]
    shaped: dict[str, Any] = {
        "bind": spoa["bind"],
        "log_level": log.get("level", LEGACY_LOG_LEVEL),
        "default_application": GEN1_APP_NAME,
        "applications": [app],
    }
    if "dir" in log:
        shaped["log_dir"] = log["dir"]
    origins: PathMap = {
        ("bind",): ("spoa", "bind"),
        ("log_level",): ("log", "level"),
        ("default_application",): ("spoa",),
        ("applications",): ("spoa",),
        ("applications", 0): ("spoa",),
        ("applications", 0, "directives"): ("spoa", "include"),
        ("applications", 0, "transaction_ttl_ms"): ("spoa", "transaction_ttl"),
    }
    notice = (
        "in the current form spoa.bind → bind; log.level → log_level; spoa.include → "
        f"an application {GEN1_APP_NAME!r} with `Include` lines in directives; "
        "spoa.transaction_ttl → transaction_ttl_ms with response_check: true"
    )
    return shaped, origins, [notice]


def _gen2_ttl(settings: dict[str, Any]) -> tuple[int | None, str | None]:
    """The TTL in milliseconds and the key it came from; (None, None): not set, the default."""
    if "transaction_ttl_ms" in settings:
        return settings["transaction_ttl_ms"], "transaction_ttl_ms"
    if "transaction_ttl" in settings:
        return settings["transaction_ttl"], "transaction_ttl"
    if "transaction_ttl_seconds" in settings:
        return settings["transaction_ttl_seconds"] * 1000, "transaction_ttl_seconds"
    return None, None


def gen2_to_gen3(data: dict[str, Any]) -> tuple[dict[str, Any], PathMap, list[str]]:
    """``applications:`` map → list (docs/compatibility.md "Gen2 keys", "Config generations")."""
    notices: list[str] = []
    origins: PathMap = {}
    apps: list[dict[str, Any]] = []
    for index, (raw_name, raw_settings) in enumerate(data["applications"].items()):
        settings: dict[str, Any] = raw_settings or {}
        where: Path = ("applications", str(raw_name))
        parts = _include_lines(settings.get("include", []))
        parts += settings.get("rules", [])
        if "directives" in settings:
            parts.append(settings["directives"])
        ttl, ttl_key = _gen2_ttl(settings)
        app: dict[str, Any] = {
            "name": str(raw_name),
            "directives": "\n".join(parts),
            "response_check": not settings.get("no_response_check", False),
        }
        if ttl is not None:
            app["transaction_ttl_ms"] = ttl
        if "transaction_active_limit" in settings:
            app["transaction_active_limit"] = settings["transaction_active_limit"]
        if "log_level" in settings or "log_file" in settings:
            word = str(settings.get("log_level", LEGACY_LOG_LEVEL)).lower()
            if word not in _ZAP_LEVELS:
                notices.append(
                    f"applications.{raw_name}.log_level: unknown level {word!r}, "
                    "using info (as coraza-spoa v0.1 did)"
                )
            app["log_level"] = _ZAP_LEVELS.get(word, "info")
            if "log_file" in settings:
                app["log_file"] = settings["log_file"]
            # Gen2 application logs were zap's JSON encoder
            app["log_format"] = "json"
        apps.append(app)
        origins[("applications", index)] = where
        origins[("applications", index, "name")] = where
        origins[("applications", index, "response_check")] = (*where, "no_response_check")
        origins[("applications", index, "transaction_ttl_ms")] = (*where, ttl_key or "")
        if ttl_key is None:
            origins[("applications", index, "transaction_ttl_ms")] = where
    shaped: dict[str, Any] = {"bind": data["bind"], "applications": apps}
    if "default_application" in data:
        shaped["default_application"] = data["default_application"]
    notices.insert(
        0,
        "in the current form `applications:` becomes a list of `- name: NAME` items; "
        "no_response_check: X → response_check: (not X); rules → directives",
    )
    return shaped, origins, notices
