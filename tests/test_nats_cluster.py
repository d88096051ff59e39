"""A node on a three-server NATS cluster whose server is SIGKILLed, twice, under a steady load: it moves to
another server by itself and serves again at once, answering nothing twice (benchmarks/cluster_failover.py)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from cluster_failover import scenario


async def test_a_node_survives_the_loss_of_its_server_twice_without_a_restart_or_a_double_answer():
    result = await scenario(rate=100)

    assert result["doubled"] == 0 and result["wrong"] == 0
    assert result["node_restarted"] is False
    kills = result["kills"]
    assert len(kills) == 2 and all(kill["moved_to"] != kill["killed"] for kill in kills)
    assert all(kill["serving_again_s"] < 10 for kill in kills)
    # At most once: a request in flight on the dead server's connections is lost, and only those.
    assert result["lost"] <= 0.05 * result["sent"], result
    assert result["answered"] + result["lost"] == result["sent"]
