"""Test harness shared by every test tier: free ports, managed subprocesses (HAProxy, the agent,
an HTTP backend), config rendering and a tiny HTTP client. See README.md in this folder."""

from __future__ import annotations
