"""Loading the user's module: file paths, dotted names, and every way it can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krt_runner.errors import HandlerLoadError
from krt_runner.node.user_code import load_user_code

ROOT = Path(__file__).resolve().parent.parent


def write_module(base: Path, source: str, name: str = "node.py") -> str:
    (base / "src").mkdir(parents=True, exist_ok=True)
    (base / "src" / name).write_text(source)
    return f"src/{name}"


def test_a_file_relative_to_the_base_path_is_loaded_with_its_directory_importable(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "helper_mod_abc.py").write_text("VALUE = 42\n")
    path = write_module(tmp_path, "import helper_mod_abc\ndef handler(ctx, data):\n    return helper_mod_abc.VALUE\n")

    code = load_user_code(path, tmp_path)

    assert code.handler(None, None) == 42 and code.init is None and code.name == "node"


def test_a_dotted_module_name_is_imported_from_the_base_path(tmp_path):
    (tmp_path / "pkg_xyz").mkdir()
    (tmp_path / "pkg_xyz" / "__init__.py").write_text("")
    (tmp_path / "pkg_xyz" / "node_mod.py").write_text("async def init(ctx): pass\nasync def handler(ctx, d): pass\n")

    code = load_user_code("pkg_xyz.node_mod", tmp_path)

    assert code.init is not None and code.handler_is_async


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "no file at"),
        ("def handler(ctx, data:\n", "syntax error at line 1"),
        ("import module_that_does_not_exist_42\ndef handler(ctx, d): pass\n", "module_that_does_not_exist_42"),
        ("raise RuntimeError('config missing')\n", "RuntimeError: config missing"),
        ("def init(ctx): pass\n", "defines no handler"),
        ("handler = 3\n", "defines no handler"),
    ],
    ids=["missing-file", "syntax-error", "import-error", "error-at-import", "no-handler", "handler-not-callable"],
)
def test_each_loading_failure_names_the_file_and_the_cause(tmp_path, source, expected):
    path = "src/node.py" if source is None else write_module(tmp_path, source)

    with pytest.raises(HandlerLoadError, match=r"src/node\.py") as caught:
        load_user_code(path, tmp_path)

    assert expected in str(caught.value)


def test_an_unknown_dotted_module_is_a_load_error(tmp_path):
    with pytest.raises(HandlerLoadError, match="no_such_pkg_77"):
        load_user_code("no_such_pkg_77.node", tmp_path)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "no file at"),
        ("def handler(ctx, data:\n", "syntax error"),
        ("import module_that_does_not_exist_42\n", "module_that_does_not_exist_42"),
        ("def init(ctx): pass\n", "defines no handler"),
    ],
    ids=["missing-file", "syntax-error", "import-error", "no-handler"],
)
def test_run_exits_2_with_one_clear_line_for_each_loading_failure(tmp_path, source, expected):
    path = "src/node.py" if source is None else write_module(tmp_path, source)
    env = {
        "PATH": "/usr/bin:/bin",
        "KRT_NATS_SERVER": "nats://127.0.0.1:1",  # never reached: loading fails first
        "KRT_NATS_INPUT": "in",
        "KRT_BASE_PATH": str(tmp_path),
        "KRT_HANDLER_PATH": path,
        "KRT_LOG_FORMAT": "json",
    }

    result = subprocess.run(
        [sys.executable, "-m", "krt_runner", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2, result.stderr
    # one line names the file and the cause (a missing file: among the settings' problems, with any others)
    said = [line for line in result.stderr.splitlines() if line.startswith(("krt-runner:", "  - "))]
    named = next(line for line in said if "src/node.py" in line)
    assert expected in named, result.stderr


def test_init_that_raises_stops_start_up_with_exit_code_1(nats_server, tmp_path):
    path = write_module(tmp_path, "def init(ctx):\n    raise RuntimeError('no model')\ndef handler(c, d): pass\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "KRT_NATS_SERVER": nats_server.url,
        "KRT_NATS_INPUT": "in",
        "KRT_BASE_PATH": str(tmp_path),
        "KRT_HANDLER_PATH": path,
        "KRT_LOG_FORMAT": "json",
        "KRT_MEASUREMENTS_ENABLED": "false",
    }

    result = subprocess.run(
        [sys.executable, "-m", "krt_runner", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 1
    assert "init of 'src/node.py' failed: RuntimeError: no model" in result.stderr


def test_a_syntax_error_in_a_module_the_handler_imports_names_that_module_and_its_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "helper_with_typo_93.py").write_text("x = 1\nVALUE = (1,\n")
    path = write_module(tmp_path, "import helper_with_typo_93\ndef handler(ctx, d): pass\n")

    with pytest.raises(HandlerLoadError) as caught:
        load_user_code(path, tmp_path)

    assert "syntax error in src/helper_with_typo_93.py at line 2: '(' was never closed" in str(caught.value)
    assert caught.value.details.startswith(f'  File "{tmp_path / "src" / "helper_with_typo_93.py"}", line 2')


def test_a_dotted_handler_imports_its_own_folders_generated_modules_as_a_file_handler_does(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sibling_pb2_61.py").write_text("ANSWER = 42\n")
    (tmp_path / "src" / "dotted_node_61.py").write_text(
        "import sibling_pb2_61\ndef handler(ctx, d): return sibling_pb2_61.ANSWER\n"
    )

    code = load_user_code("src.dotted_node_61", tmp_path)

    assert code.handler(None, None) == 42
