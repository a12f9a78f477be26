"""The one start-up of an agent-behind-HAProxy stack, for the e2e tests, the CRS runner and the
bench: the agents first (each waited for by its own ``wait_ready``: its port, or for an
``agent.WorkersAgent`` every worker ready), then HAProxy (waited for on its frontends), torn
down in the reverse order on every exit path, with every process's output and HAProxy's
rendered configs written to stderr when the block fails.

``running_stack`` takes agents built but not started (``cli_agent`` or any ``AgentProcess``)
and a function that starts HAProxy (``start_haproxy`` on any config); ``shipped_stack`` is the
usual case: HAProxy on the SHIPPED etc/haproxy files (``tests.support.shipped``), pointed at the
agents (several agents: round robin).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.haproxy import HAProxy
from tests.support.shipped import shipped_haproxy

# loading CRS takes a few seconds, more while other work shares the cores
AGENT_READY_TIMEOUT_S = 60.0


@dataclass
class RunningStack:
    haproxy: HAProxy
    agents: Sequence[AgentProcess]

    @property
    def agent(self) -> AgentProcess:
        """The first agent (the only one unless the stack has several)."""
        return self.agents[0]


@contextmanager
def running_stack(
    agents: Sequence[AgentProcess],
    start_haproxy: Callable[[], AbstractContextManager[HAProxy]],
    *,
    agent_ready_timeout: float = AGENT_READY_TIMEOUT_S,
) -> Iterator[RunningStack]:
    """Start ``agents``, wait until each accepts connections, then enter ``start_haproxy()``;
    everything is stopped when the block ends (HAProxy first)."""
    with ExitStack() as stack:
        for agent in agents:
            stack.enter_context(agent)
        for agent in agents:
            agent.wait_ready(timeout=agent_ready_timeout)
        haproxy = stack.enter_context(start_haproxy())
        yield RunningStack(haproxy, agents)


@contextmanager
def shipped_stack(
    version: str,
    workdir: Path,
    agents: Sequence[AgentProcess],
    *,
    frontend_port: int,
    agent_ready_timeout: float = AGENT_READY_TIMEOUT_S,
    **shipped_options: Any,
) -> Iterator[RunningStack]:
    """``running_stack`` with HAProxy ``version`` on the shipped config: the frontend on
    ``frontend_port``, the SPOE backend's servers on the agents' ports; ``shipped_options`` are
    ``shipped_haproxy``'s (``backend_port``, ``overlays``, ``frontend_lines``, ...)."""
    ports = [agent.port for agent in agents if agent.port is not None]
    assert ports and len(ports) == len(agents), "shipped_stack's agents listen on TCP ports"

    def start() -> AbstractContextManager[HAProxy]:
        return shipped_haproxy(
            version,
            workdir,
            frontend_port=frontend_port,
            agent_port=ports[0],
            more_agent_ports=ports[1:],
            **shipped_options,
        )

    with running_stack(agents, start, agent_ready_timeout=agent_ready_timeout) as running:
        yield running
