"""Agent names -> classes, imported lazily so that one agent's imports never slow another."""

from __future__ import annotations

import importlib

from mwm.errors import UserError

AGENT_NAMES = {
    "mwm": "agents.mwm.agent:MWMAgent",
    "dreamerv2": "agents.dreamerv2.agent:DreamerV2Agent",
    "curl": "agents.curl.agent:CurlAgent",
    "siammae": "agents.siammae.agent:SiamMAEAgent",
}


def agent_class(name: str):
    if name not in AGENT_NAMES:
        raise UserError(f"unknown agent '{name}'; choose one of {', '.join(AGENT_NAMES)}")
    module, cls = AGENT_NAMES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_agent(cfg, obs_space, act_space, device):
    """Build the agent named by ``cfg.run.agent`` on ``device``.

    Model code raises ValueError for arguments it cannot work with; here those arguments
    come from the user's config, so the entry points get a :class:`UserError` (one line,
    exit status 2) instead.
    """
    try:
        agent = agent_class(cfg.run.agent)(cfg, obs_space, act_space, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return agent.to(device)
