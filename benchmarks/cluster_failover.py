"""A node on a three-server NATS cluster loses its server, twice, under a steady load: what is lost, what is doubled,
how long until it serves again.

    .venv/bin/python benchmarks/cluster_failover.py              # prints one JSON object
    .venv/bin/python benchmarks/cluster_failover.py --rate 400   # requests per second

Three nats-servers on loopback ports, routed into one cluster. One krt-runner
node (the greeter's ``greet``) is given all three URLs, and a requester too.
Both reconnect by themselves (nats-py). While requests go out at a steady
rate, the server the node is connected to is SIGKILLed; once the node serves
again that server is restarted, and the node's new server is SIGKILLed. Every
request has its own name, so a wrong or doubled answer would show.
tests/test_nats_cluster.py runs the same scenario, shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.errors import NoRespondersError, TimeoutError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "greeter" / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # processes.py imports the tests' VictoriaMetrics helper

import greeter_pb2  # noqa: E402
from processes import NodeProc, start_node  # noqa: E402

from krt_runner.envelope import decode  # noqa: E402
from krt_runner.local_krt.embedded import EmbeddedNats, free_port  # noqa: E402
from krt_runner.requester_envelope import request_envelope  # noqa: E402

SUBJECT = "cluster-greet"
ANSWER_TIMEOUT = 3.0  # seconds a request waits: longer than a reconnect takes
# An answer this long after the kill was not already on its way: the node had reconnected (route latency is <1 ms).
_SETTLE = 0.01


@dataclass
class Tally:
    """What the requester saw."""

    sent: int = 0
    answered: int = 0
    lost: int = 0
    wrong: int = 0
    answers_by_name: dict[str, int] = field(default_factory=dict)
    answer_times: list[float] = field(default_factory=list)

    @property
    def doubled(self) -> int:
        return sum(count - 1 for count in self.answers_by_name.values() if count > 1)


def cluster() -> list[EmbeddedNats]:
    """Three servers; each routes to the other two."""
    ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{port}" for port in ports]
    return [
        EmbeddedNats(extra_args=["--cluster_name", "krt", "--cluster", routes[index],
                                 "--routes", ",".join(route for other, route in enumerate(routes) if other != index)])
        for index in range(3)
    ]


async def wait_routed(servers: list[EmbeddedNats]) -> None:
    """Until a request sent on the last server reaches a subscriber on the first: the cluster has formed."""
    first, last = await nats.connect(servers[0].url), await nats.connect(servers[-1].url)

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"yes")

    try:
        await first.subscribe("routed", cb=answer)
        await first.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                await last.request("routed", b"", timeout=0.5)
                return
            except (TimeoutError, NoRespondersError):
                await asyncio.sleep(0.1)
        raise RuntimeError("the three nats-servers did not form a cluster")
    finally:
        await first.close()
        await last.close()


def current_server(node: NodeProc) -> str:
    """The URL of the server the node last (re)connected to, from its log."""
    for line in reversed(node.lines):
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("event") in ("connected to NATS", "reconnected to NATS"):
            return str(record["server"])
    raise RuntimeError("the node has not connected")


async def load(nc: nats.NATS, tally: Tally, rate: float, stop: asyncio.Event) -> None:
    """Send a request every 1/rate seconds, each waiting for its own answer."""
    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        task = asyncio.ensure_future(one_request(nc, tally, f"r{tally.sent}"))
        tally.sent += 1
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*pending)


async def one_request(nc: nats.NATS, tally: Tally, name: str) -> None:
    data = request_envelope(greeter_pb2.Request(name=name)).SerializeToString()
    try:
        reply = await nc.request(SUBJECT, data, timeout=ANSWER_TIMEOUT)
    except (TimeoutError, NoRespondersError, nats.errors.ConnectionClosedError):
        tally.lost += 1
        return
    answer = decode(reply.data, max_decompressed=1 << 20)
    response = greeter_pb2.Response()
    if answer.error or not answer.payload.Unpack(response) or response.greeting != f"Hello, {name}!":
        tally.wrong += 1
    tally.answered += 1
    tally.answers_by_name[name] = tally.answers_by_name.get(name, 0) + 1
    tally.answer_times.append(time.monotonic())


async def kill_and_recover(servers: list[EmbeddedNats], node: NodeProc, tally: Tally) -> dict[str, float | str]:
    """SIGKILL the node's server; the seconds until an answer sent after the kill arrives."""
    url = current_server(node)
    victim = next(server for server in servers if url.endswith(f":{server.port}"))
    killed_at = time.monotonic()
    victim.stop(kill=True)
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        if any(moment > killed_at + _SETTLE for moment in tally.answer_times[-50:]) and current_server(node) != url:
            break
        await asyncio.sleep(0.02)
    serving_again = next(moment for moment in tally.answer_times if moment > killed_at + _SETTLE) - killed_at
    await asyncio.sleep(1.0)  # a steady second on the new server
    victim.start()  # back in the cluster before the next kill
    await asyncio.sleep(1.0)
    return {"killed": url, "moved_to": current_server(node), "serving_again_s": round(serving_again, 3)}


async def scenario(rate: float, *, kills: int = 2) -> dict[str, object]:
    servers = cluster()
    for server in servers:
        server.start()
    node = None
    try:
        await wait_routed(servers)
        urls = ",".join(server.url for server in servers)
        node = start_node("krt", url=urls, name="greet", subject_in=SUBJECT, subject_out="",
                          handler=str(ROOT / "examples" / "greeter" / "src" / "greet.py"),
                          env={"KRT_NATS_RECONNECT_WAIT": "0.2", "KRT_MEASUREMENTS_ENABLED": "false"})
        node.wait_ready()
        nc = await nats.connect(urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=_quiet)
        tally, stop = Tally(), asyncio.Event()
        sending = asyncio.ensure_future(load(nc, tally, rate, stop))
        await asyncio.sleep(1.0)
        events = [await kill_and_recover(servers, node, tally) for _ in range(kills)]
        stop.set()
        await sending
        await nc.close()
        alive = node.process.poll() is None
    finally:
        if node is not None:
            node.stop()
        for server in servers:
            server.close()
    return {"rate": rate, "sent": tally.sent, "answered": tally.answered, "lost": tally.lost,
            "doubled": tally.doubled, "wrong": tally.wrong, "node_restarted": not alive, "kills": events}


async def _quiet(error: Exception) -> None:
    """The requester's server dies too, now and then: nats-py reconnects; nothing to print."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(scenario(args.rate)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
