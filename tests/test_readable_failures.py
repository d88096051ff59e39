"""A user's error reads as the user's (issue 26): their frames first, each traceback once, a killed node named so."""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pytest
from conftest import ROOT, node_env
from up_helpers import leftovers, run_up

GREETER = ROOT / "examples" / "greeter"

FAILING = {
    "async handler": """
        def helper(name):
            raise ValueError(f"bad name {name}")


        async def handler(ctx, data):
            helper("Ada")
    """,
    "sync handler": """
        def helper(name):
            raise ValueError(f"bad name {name}")


        def handler(ctx, data):
            helper("Ada")
    """,
    "processor": """
        import krt_runner
        from greeter_pb2 import Request


        def helper(name):
            raise ValueError(f"bad name {name}")


        class Node(krt_runner.Processor):
            def validate(self, ctx, req: Request):
                pass

            async def process(self, ctx, req: Request) -> Request:
                helper(req.name)
    """,
}


def traceback_frames(text: str) -> list[str]:
    return re.findall(r'File "[^"]+", line \d+, in \w+', text)


@pytest.mark.parametrize("kind", list(FAILING))
async def test_a_handlers_traceback_starts_at_the_users_frame_and_is_not_wrapped_in_ours(
    nats_server, start_node, requester, handler_dir, kind
):
    base = handler_dir(FAILING[kind], name="failing.py")
    subject = f"fail-{kind.replace(' ', '-')}"
    node = start_node(**node_env(nats_server, base, "src/failing.py", input=subject))

    answer = await requester.greet(subject, "Ada")
    node.wait_for_line("ValueError: bad name Ada")

    assert "handler raised ValueError: bad name Ada" in answer.error
    logged = next(json.loads(line) for line in node.lines if '"exception"' in line)
    frames = traceback_frames(logged["exception"])
    assert frames[0].startswith(f'File "{base / "src" / "failing.py"}"'), logged["exception"]
    assert not any("krt_runner" in frame for frame in frames), logged["exception"]
    assert "HandlerError" not in logged["exception"] and "direct cause" not in logged["exception"]


def broken_greeter(tmp_path, greet_source: str):
    krt = tmp_path / "broken"
    shutil.copytree(GREETER, krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (krt / "src" / "greet.py").write_text(greet_source)
    return krt


INIT_FAILS = """\
def load_model():
    raise FileNotFoundError("models/model.joblib")


def init(ctx):
    ctx.set("model", load_model())


def handler(ctx, data):
    return data
"""


def test_under_up_an_init_failures_traceback_is_shown_once_from_the_users_frame(tmp_path):
    krt = broken_greeter(tmp_path, INIT_FAILS)

    done = run_up(str(krt), "--request", '{"name": "Ada"}', cwd=tmp_path, marker=uuid.uuid4().hex)

    assert done.returncode == 1
    assert done.stderr.count("Traceback (most recent call last)") == 1, done.stderr
    frames = traceback_frames(done.stderr)
    assert frames[0].startswith(f'File "{krt / "src" / "greet.py"}", line 6, in init'), done.stderr
    assert not any("krt_runner" in frame for frame in frames), done.stderr
    assert "greet exited with code 1; its last lines:" in done.stderr
    assert "init of 'src/greet.py' failed: FileNotFoundError: models/model.joblib" in done.stderr
    assert "(traceback above)" in done.stderr


def test_a_node_killed_by_sigkill_is_reported_as_killed_not_as_a_negative_exit_code(tmp_path):
    krt = broken_greeter(tmp_path, "import os\nimport signal\n\n\ndef handler(ctx, data):\n"
                                   "    os.kill(os.getpid(), signal.SIGKILL)\n")
    marker = uuid.uuid4().hex

    done = run_up(str(krt), "--request", '{"name": "Ada"}', cwd=tmp_path, marker=marker)

    assert done.returncode == 1
    assert "greet was killed by SIGKILL (out of memory?); its last lines:" in done.stderr, done.stderr
    assert "code -9" not in done.stderr
    assert leftovers(marker) == []
