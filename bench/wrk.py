"""Drive wrk (Debian's 4.1) for one scenario and read back its numbers as a dict.

wrk's Lua ``done()`` hook prints one JSON line (requests, errors, latency percentiles), so no
text output is scraped. This module only builds the script and runs wrk; it never starts
HAProxy or the agent.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path
from typing import Any

from bench.scenarios import Scenario

JSON_MARK = "BENCH_JSON "
# percentiles for the report and the latency plot (a CDF needs more than p50/p99)
LUA_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99)


def _lua_quoted(value: bytes) -> str:
    # a quoted Lua string with every byte but plain printable ASCII escaped as \ddd: a long
    # bracket string would turn the request's CRLFs into LFs
    plain = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in value) + '"'


def raw_request(scenario: Scenario) -> bytes:
    """The request bytes wrk sends for ``scenario``: its headers in the scenario's order, so
    that HAProxy forwards ``scenario.forwarded_request_headers`` exactly and the ceiling can feed
    the engine the same list (docs/performance.md change 38). wrk's own ``wrk.format`` writes
    the headers in Lua table order, which LuaJIT's hash seed shuffles from run to run."""
    lines = [f"{scenario.method} {scenario.uri} HTTP/1.1".encode()]
    for name, value in scenario.forwarded_request_headers:
        # the client's spelling; HAProxy lower-cases names before the agent sees them
        title = b"-".join(part.capitalize() for part in name.split(b"-"))
        lines.append(title + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n" + scenario.body


def lua_script(scenario: Scenario) -> str:
    """The wrk script for ``scenario``: the request (``raw_request``) and the JSON report."""
    # wrk.init builds the one request every connection sends by calling wrk.format(); ours
    # returns the bytes as they are (keep-alive is HTTP/1.1's default: no Connection header)
    lines = [f"local request_bytes = {_lua_quoted(raw_request(scenario))}"]
    lines.append("wrk.format = function() return request_bytes end")
    pcts = ", ".join(str(p) for p in LUA_PERCENTILES)
    lines.append(
        f"""
done = function(summary, latency, requests)
  local pcts = {{{pcts}}}
  local parts = {{}}
  for _, p in ipairs(pcts) do
    parts[#parts + 1] = string.format('"p%s": %d', tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    '{JSON_MARK}{{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {{"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}, '
    .. '"latency_us": {{%s, "mean": %.1f, "max": %d, "stdev": %.1f}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "), latency.mean, latency.max, latency.stdev))
end
"""
    )
    return "\n".join(lines) + "\n"


def parse_output(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(JSON_MARK):
            result: dict[str, Any] = json.loads(line[len(JSON_MARK) :])
            return result
    raise RuntimeError(f"wrk printed no report:\n{stdout[-2000:]}")


def run_wrk(
    url: str,
    scenario: Scenario,
    *,
    connections: int,
    duration_s: float,
    threads: int,
    workdir: Path,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Run wrk closed-loop with ``connections`` keep-alive connections; return its report.

    wrk's own request timeout is longer than SPOE's ``timeout processing`` (2 s in the bench
    overlay), so a slow answer is counted by HAProxy's log, not lost as a client timeout.
    """
    script = workdir / f"wrk-{scenario.name}.lua"
    script.write_text(lua_script(scenario), encoding="latin-1")
    command = [
        "wrk",
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    # wrk's own CPU: it shares the two cores with HAProxy and the agent, which the ceiling
    # does not have to (the report shows what that costs)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    result = parse_output(done.stdout)
    result["connections"] = connections
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
