"""Every node answers the NATS Services API's discovery subjects (ADR-32), checked with clients nobody here wrote:
the NATS team's Node.js client (its services client, as `nats micro` uses them) and nats-py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import nats
import pytest
from conftest import ROOT, node_env
from up_helpers import UpRun

from krt_runner import __version__
from krt_runner.client import Client
from krt_runner.local_krt.embedded import EmbeddedNats

NODE_CLIENTS = ROOT / "tests" / "node_clients"
GREETER = ROOT / "examples" / "greeter"


def services(url: str, name: str = "") -> dict:
    """What the Node.js services client finds: {"ping": [...], "info": [...], "stats": [...]}."""
    if not (NODE_CLIENTS / "node_modules" / "nats").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("the Node.js NATS client is not installed: scripts/install_test_servers.sh installs it")
        pytest.skip("the Node.js NATS client is not installed (scripts/install_test_servers.sh)")
    node = shutil.which("node")
    assert node, "node not found"
    done = subprocess.run([node, "nats_services.js", url, *([name] if name else [])], cwd=NODE_CLIENTS,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def greeter_up(tmp_path):
    run = UpRun(str(GREETER), "--no-entrypoint", cwd=tmp_path)
    try:
        run.wait_for_call_line()
        url = next(word for line in run.out for word in line.split() if word.startswith("nats://"))
        yield url
    finally:
        run.stop()


async def test_the_node_js_services_client_lists_the_greeter_nodes_with_their_subjects_and_live_counts(greeter_up):
    async with await Client.connect(greeter_up) as client:
        from greeter_pb2 import Request, Response

        await asyncio.gather(*(client.call("greeter-v1-Greet-entrypoint", Request(name=f"n{i}"), Response)
                               for i in range(25)))

    found = await asyncio.to_thread(services, greeter_up)

    names = sorted(ping["name"] for ping in found["ping"])
    assert names == ["greeter-v1-greet-decorate", "greeter-v1-greet-greet"]
    assert {ping["version"] for ping in found["ping"]} == {__version__}
    info = {item["name"]: item for item in found["info"]}
    greet = info["greeter-v1-greet-greet"]
    assert greet["endpoints"] == [{"name": "greet", "subject": "greeter-v1-Greet-entrypoint",
                                   "queue_group": "queue_greeter-v1-Greet-entrypoint", "metadata": {}}]
    assert greet["metadata"]["krt_version"] == "greeter-v1" and greet["metadata"]["workflow"] == "greet"
    stats = {item["name"]: item["endpoints"][0] for item in found["stats"]}
    for name in names:
        assert stats[name]["num_requests"] == 25 and stats[name]["num_errors"] == 0
        assert stats[name]["processing_time"] >= stats[name]["average_processing_time"] * 25 > 0


async def test_the_node_js_client_reaches_one_instance_by_name_and_id(greeter_up):
    found = await asyncio.to_thread(services, greeter_up, "greeter-v1-greet-decorate")

    assert [ping["name"] for ping in found["ping"]] == ["greeter-v1-greet-decorate"]
    instance = found["ping"][0]["id"]
    nc = await nats.connect(greeter_up)
    try:
        reply = await nc.request(f"$SRV.STATS.greeter-v1-greet-decorate.{instance}", b"", timeout=5)
    finally:
        await nc.close()
    assert json.loads(reply.data)["type"] == "io.nats.micro.v1.stats_response"


async def test_stats_count_errors_and_keep_the_last_one(nats_server, start_node, handler_dir, requester):
    base = handler_dir("def handler(ctx, data):\n    raise ValueError('no model loaded')\n")
    start_node(**node_env(nats_server, base, "src/node.py", input="failing-in", name="failing"))
    await requester.greet("failing-in", "x")

    reply = await requester.nc.request("$SRV.STATS.v1-test-workflow-failing", b"", timeout=5)

    endpoint = json.loads(reply.data)["endpoints"][0]
    assert endpoint["num_requests"] == 1 and endpoint["num_errors"] == 1
    assert "no model loaded" in endpoint["last_error"]


def test_a_node_whose_user_may_not_subscribe_to_the_discovery_subjects_still_serves(tmp_path, start_node, handler_dir):
    config = tmp_path / "users.conf"
    config.write_text('authorization { users = [ {user: "node", password: "pw", '
                      'permissions: {subscribe: {deny: ["$SRV.>"]}}} ] }\n')
    base = handler_dir("from greeter_pb2 import Response\n\n"
                       "def handler(ctx, data):\n    return Response(greeting='ok')\n")
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        env = node_env(server, base, "src/node.py", input="quiet-in", KRT_NATS_USER="node", KRT_NATS_PASSWORD="pw")
        node = start_node(**env)
        node.wait_for_line("services discovery subjects")

        answer = asyncio.run(_greet(server.url.replace("nats://", "nats://node:pw@"), "quiet-in"))

    assert answer.error == "" and node.process.poll() is None


async def _greet(url: str, subject: str):
    from conftest import Requester

    nc = await nats.connect(url)
    try:
        return await Requester(nc).greet(subject, "x")
    finally:
        await nc.close()



async def test_a_free_form_node_name_becomes_a_service_and_an_endpoint_name_adr_32_allows(
    nats_server, start_node, handler_dir, requester
):
    base = handler_dir("def handler(ctx, data):\n    return data\n")
    start_node(**node_env(nats_server, base, "src/node.py", input="named-in", name="my node.v2"))

    reply = await requester.nc.request("$SRV.INFO.v1-test-workflow-my_node_v2", b"", timeout=5)

    info = json.loads(reply.data)
    assert info["name"] == "v1-test-workflow-my_node_v2"
    assert info["endpoints"][0]["name"] == "my_node_v2" and info["endpoints"][0]["subject"] == "named-in"
