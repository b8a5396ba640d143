"""Agents: one package each, all behind :class:`agents.base.Agent`."""

from agents.registry import make_agent, AGENT_NAMES

__all__ = ["make_agent", "AGENT_NAMES"]
