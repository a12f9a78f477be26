"""Through-HAProxy mode: every stage sent over a raw socket to a real HAProxy running the SHIPPED
``etc/haproxy/haproxy.cfg`` + ``coraza.cfg``, in front of our albedo backend, with the agent
(``python -m coraza_spoa_py -config``) running CRS in the setup the suite expects.

The shipped files are rendered by ``tests.support.shipped`` (the frontend on a free port, the
agent's and albedo's addresses). The test overlay (``overlay.cfg`` beside this file, plus
``FRONTEND_OVERLAY`` lines added to the shipped frontend because HAProxy cannot reopen a proxy
from a second ``-f`` file):
- ``tune.bufsize 131072``: CRS stages send ~64 KB bodies; HAProxy truncates silently to the
  buffer (docs/haproxy.md "Request bodies");
- the rule ids the agent exported (``export_rule_ids: true`` → ``txn.coraza.rule_ids``, set on
  the request and the response ACK) copied into ``X-Coraza-Rule-Ids`` on every response, and
  ``txn.coraza.error`` into ``X-Coraza-Error``. Each stage is judged by those ids — no log
  scraping, so stages can run concurrently.

It owns the processes it starts and stops them on every exit path.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from coraza_spoa_py.settings import RulePaths
from tests.crs import builder
from tests.crs.albedo import AlbedoServer
from tests.crs.crs_setup import CRS_TEST_DIRECTIVES, write_agent_config
from tests.crs.judge import RULE_ID_PATTERN, Observation, observe_with_retry
from tests.crs.loader import Stage
from tests.crs.sender import SendError, send_raw
from tests.support.agent import AgentProcess, cli_agent
from tests.support.haproxy import HAProxy
from tests.support.ports import free_port
from tests.support.shipped import SHIPPED_DIR
from tests.support.stack import shipped_stack

SHIPPED_HAPROXY_DIR = SHIPPED_DIR
OVERLAY_FILE = Path(__file__).with_name("overlay.cfg")
RULE_IDS_HEADER = "X-Coraza-Rule-Ids"
ERROR_HEADER = "X-Coraza-Error"
# HAProxy's unique-id, the agent's transaction id (coraza.cfg ``id=unique-id``): finds the
# stage's records in the agent's rule-match log
TRANSACTION_HEADER = "X-Coraza-Tx"
MATCH_LOG_NAME = "agent-matches.jsonl"
FRONTEND_OVERLAY = (
    f"    http-after-response set-header {TRANSACTION_HEADER} %[unique-id]",
    f"    http-after-response set-header {RULE_IDS_HEADER} %[var(txn.coraza.rule_ids)]"
    " if { var(txn.coraza.rule_ids) -m found }",
    f"    http-after-response set-header {ERROR_HEADER} %[var(txn.coraza.error)]"
    " if { var(txn.coraza.error) -m found }",
)
# HAProxy's own SPOE errors (< 256: 1 = timeout) are load, not rule fidelity: one retry
RETRYABLE_AGENT_ERRORS = frozenset(range(1, 256))


@dataclass
class Stack:
    haproxy: HAProxy
    agent: AgentProcess
    frontend_port: int


@contextmanager
def crs_stack(
    workdir: Path,
    *,
    version: str = "2.6",
    haproxy_dir: Path = SHIPPED_HAPROXY_DIR,
    rule_paths: RulePaths | None = None,
    directives: str = CRS_TEST_DIRECTIVES,
    log_messages: bool = False,
    agents: int = 1,
) -> Iterator[Stack]:
    """albedo + agent (CRS test config) + HAProxy ``version`` with the shipped config.
    ``log_messages``: the agent writes its rule matches to ``workdir/MATCH_LOG_NAME``, for
    ``attach_messages`` once the stack is stopped (its log is flushed then).
    ``agents`` > 1: that many agents, round robin (``tests.support.shipped.several_agents``),
    so that responses reach other agents than their requests (orphans); ``Stack.agent`` is the
    first, and the others' match logs are appended to the first's once they stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    agent_ports = [free_port() for _ in range(agents)]
    frontend_port = free_port()
    match_logs = [
        workdir / (MATCH_LOG_NAME if index == 0 else f"agent{index}-{MATCH_LOG_NAME}")
        for index in range(agents)
    ]
    with ExitStack() as stack:
        backend = stack.enter_context(AlbedoServer())
        processes: list[AgentProcess] = []
        for index, (port, match_log) in enumerate(zip(agent_ports, match_logs, strict=True)):
            suffix = f"-{index}" if index else ""
            config = write_agent_config(
                workdir / f"config{suffix}.yml",
                bind=f"127.0.0.1:{port}",
                log_file=workdir / f"agent{suffix}.log",
                rule_paths=rule_paths,
                directives=directives,
                match_log_file=match_log if log_messages else None,
            )
            agent_log = workdir / f"agent-output{suffix}.log"
            processes.append(cli_agent(config, port=port, log_path=agent_log))
        running = stack.enter_context(
            shipped_stack(
                version,
                workdir,
                processes,
                frontend_port=frontend_port,
                backend_port=backend.port,
                frontend_lines=FRONTEND_OVERLAY,
                shipped_dir=haproxy_dir,
                overlays=[OVERLAY_FILE],
            )
        )
        yield Stack(running.haproxy, running.agent, frontend_port)
    if log_messages:
        with match_logs[0].open("ab") as merged:
            for other in match_logs[1:]:
                if other.exists():
                    merged.write(other.read_bytes())


def observe(address: tuple[str, int], stage: Stage, *, timeout_s: float) -> Observation:
    try:
        raw = builder.build_request(stage)
    except builder.BuildError as exc:
        return Observation(error=f"build: {exc}")
    head = stage.input.method == "HEAD"

    def attempt() -> Observation:
        seen = _send(address, raw, timeout_s, head)
        if seen.agent_error in RETRYABLE_AGENT_ERRORS:
            seen = _send(address, raw, timeout_s, head)
        return seen

    return observe_with_retry(attempt, stage.output)


def _send(address: tuple[str, int], raw: bytes, timeout_s: float, head: bool) -> Observation:
    try:
        response = send_raw(address, raw, timeout_s=timeout_s, head=head)
    except SendError as exc:
        return Observation(error=str(exc))
    ids_text = response.header(RULE_IDS_HEADER) or ""
    rule_ids = tuple(int(part) for part in ids_text.split(",") if part.strip().isdigit())
    error_text = response.header(ERROR_HEADER)
    agent_error = int(error_text) if error_text and error_text.isdigit() else None
    return Observation(
        status=response.status,
        rule_ids=rule_ids,
        response=response.raw,
        agent_error=agent_error,
        transaction_id=response.header(TRANSACTION_HEADER) or "",
    )


def needs_messages(stages: Sequence[Stage]) -> bool:
    """Whether some stage's log regex names no rule id (a message text)."""
    return any(
        not RULE_ID_PATTERN.search(regex)
        for stage in stages
        for regex in (*stage.output.log_regexes, *stage.output.no_log_regexes)
    )


def read_match_log(path: Path) -> dict[str, list[str]]:
    """``tx`` -> the ``msg`` of each rule the agent logged for it (JSON rule-match lines)."""
    messages: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match = record.get("match") if isinstance(record, dict) else None
        if isinstance(match, dict) and record.get("tx") and match.get("msg"):
            messages[str(record["tx"])].append(str(match["msg"]))
    return messages


def attach_messages(
    observations: Mapping[str, Observation], log_path: Path
) -> dict[str, Observation]:
    """The observations with the messages the agent logged for each one's transaction."""
    by_tx = read_match_log(log_path)
    return {
        stage_id: dataclasses.replace(seen, messages=tuple(by_tx.get(seen.transaction_id, ())))
        if seen.transaction_id
        else seen
        for stage_id, seen in observations.items()
    }


def run_through_haproxy(
    stages: Sequence[Stage],
    address: tuple[str, int],
    *,
    jobs: int = 4,
    timeout_s: float = 5.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Observation]:
    """Send every stage (``jobs`` at a time); keyed by stage id."""
    results: dict[str, Observation] = {}

    def one(stage: Stage) -> tuple[str, Observation]:
        return stage.stage_id, observe(address, stage, timeout_s=timeout_s)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for count, (stage_id, seen) in enumerate(pool.map(one, stages), start=1):
            results[stage_id] = seen
            if progress:
                progress(count)
    return results
