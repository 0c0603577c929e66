"""sparserl.agent_contract: the agent registry."""

from sparserl.agent_contract import AGENTS, agent_module, config_module
from sparserl.configs import dqn as dqn_config, ppo as ppo_config, sac as sac_config

MODULES = {"dqn": dqn_config, "sac": sac_config, "ppo": ppo_config}


def test_every_agent_has_a_config_module_and_an_agent_module():
    assert sorted(MODULES) == sorted(AGENTS)
    for name in AGENTS:
        assert config_module(name) is MODULES[name]
        assert callable(agent_module(name).make) and agent_module(name).LOOP in ("off_policy", "on_policy")
