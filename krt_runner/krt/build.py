"""``krt-runner build SOURCE``: validate a KRT as ``check`` does and pack it into ``dist/<version>.krt``.

``SOURCE`` is a KRT folder (with its ``krt.yml``) or a Python file describing
one with :class:`krt_runner.KRT` (``pipeline.py:krt``), whose ``krt.yml`` is
written first, beside the file. What goes into the package is
:mod:`krt_runner.krt.package`'s business.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from krt_runner.errors import EXIT_FAILED, EXIT_OK, BuildProblems, KrtFileError, KrtRunnerError
from krt_runner.krt.check import check_krt, check_source, report_problems
from krt_runner.krt.model import KRT_FILE, Krt
from krt_runner.krt.package import SUFFIX, human_size, krt_folder, package_files, write_package

DIST = "dist"


@dataclass(frozen=True)
class Built:
    """A package written by :func:`build`."""

    path: Path
    files: int
    size: int
    left_out: tuple[str, ...] = ()  # links to a folder that holds them (the KRT folder, or one above it)



def build(source: str | Path, *, output: str | Path | None = None) -> Built:
    """Validate ``source`` (a folder or ``FILE.py[:NAME]``) and write its package; returns what was written.

    Raises :class:`BuildProblems` for an invalid KRT, naming every problem.
    """
    directory = _krt_folder(str(source))
    krt, problems = check_krt(directory)
    if krt is None or problems:
        raise BuildProblems(str(source), problems)
    target = _target(output, directory / DIST, f"{krt.version}{SUFFIX}")
    if target.suffix != SUFFIX:
        raise BuildProblems(str(source), [f"--output {output}: a package's name ends in {SUFFIX} (up, check and "
                                          "local() read a package by that suffix); for a folder, end it with /"])
    links: list[str] = []
    try:
        files = package_files(directory, links)
    except KrtFileError as exc:  # its .krtignore
        raise BuildProblems(str(source), [f"{exc.path}: {problem}" for problem in exc.problems]) from None
    missing = [name for name in _referenced(krt) if name not in files]
    if missing:
        ignored = [f"{name} is used by krt.yml but left out of the package (by .krtignore?)" for name in missing]
        raise BuildProblems(str(source), ignored)
    made_folder = not target.parent.exists()
    built = Built(path=target, files=len(files), size=write_package(directory, files, target), left_out=tuple(links))
    try:
        _, packed_problems, _ = check_source(target)  # what .krtignore left out may be what a handler imports
    except BaseException:  # stopped while checking it: no package nobody checked
        _remove(target, made_folder)
        raise
    if packed_problems:
        _remove(target, made_folder)
        raise BuildProblems(str(source), [f"in the package, not in the folder (.krtignore?): {problem}"
                                          for problem in packed_problems])
    return built


def _remove(package: Path, with_folder: bool) -> None:
    package.unlink(missing_ok=True)
    if with_folder:
        with contextlib.suppress(OSError):
            package.parent.rmdir()


def _target(output: str | Path | None, dist: Path, name: str) -> Path:
    """``--output`` as a file; a folder (one that exists, or a path ending in ``/``) gets ``name`` in it."""
    if output is None:
        return dist / name
    if str(output).endswith(("/", os.sep)) or Path(output).is_dir():
        return Path(output) / name
    return Path(output)


def _krt_folder(source: str) -> Path:
    """The folder to pack (or the one holding a ``krt.yml`` given itself); a DSL file's krt.yml is written
    (validated) first."""
    if source.partition(":")[0].endswith(".py"):
        from krt_runner.krt.dsl import load_pipeline

        try:
            krt = load_pipeline(source)
            krt.write()
        except KrtFileError as exc:
            raise BuildProblems(source, [f"{exc.path}: {problem}" for problem in exc.problems]) from None
        return krt.root
    return krt_folder(Path(source))


def _referenced(krt: Krt) -> list[str]:
    names = [KRT_FILE, krt.proto, *(node.file for node in krt.nodes)]
    return [Path(name).as_posix() for name in names]


def run_build(
    source: str, *, output: str | Path | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
) -> int:  # fmt: skip
    """Run the ``build`` command: 0 and what was written, 2 and every problem, 1 when writing failed."""
    try:
        built = build(source, output=output)
    except BuildProblems as exc:
        return report_problems("build", exc.source, exc.problems, err=err)
    except (KrtRunnerError, OSError) as exc:
        print(f"krt-runner build: {exc}", file=err)
        return EXIT_FAILED
    for link in built.left_out:
        print(f"krt-runner build: left out {link}: a link to a folder that holds it (followed, it would never end, or "
              "pack what is around the KRT)", file=err)
    print(f"built {_shown(built.path)}: {built.files} files, {human_size(built.size)}", file=out)
    return EXIT_OK


def _shown(path: Path) -> Path:
    """Relative to the working directory when it lies below it (a DSL file's folder is absolute)."""
    absolute, here = path.absolute(), Path.cwd()
    return absolute.relative_to(here) if absolute.is_relative_to(here) else path
