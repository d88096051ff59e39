"""``.krt`` packages: the gzip tarball KRE v1 takes, written by ``build``, read by ``up``, ``check`` and ``local()``.

A package holds ``krt.yml`` at its root beside everything else of the KRT
folder (``src/``, ``models/``, ``docs/``, the entrypoint ``.proto``...), less
what never belongs in a deployment (:data:`DEFAULT_EXCLUDES`) and the patterns
of a ``.krtignore`` file at the folder's top. Reading one unpacks it into a
temporary folder removed on exit; entries that would land outside it, links
and devices are refused.
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from krt_runner.errors import KrtFileError
from krt_runner.krt.krt_reader import read_text
from krt_runner.krt.model import KRT_FILE

SUFFIX = ".krt"
IGNORE_FILE = ".krtignore"
# What a Python project folder holds that a deployment never needs; `dist/` is where packages go (and `*.krt` are
# packages, wherever `--output` put them), and measurements.lp is where a node run in the folder writes its
# measurements by default.
DEFAULT_EXCLUDES = (
    ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    "*.egg-info", ".git", "*.pyc", ".DS_Store", "dist/", "*.krt", "/measurements.lp",
)  # fmt: skip
# Unpacking stops before this many bytes: a guard against a package that claims to hold terabytes.
MAX_UNPACKED_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class Pattern:
    """One exclusion, in the gitignore subset ``.krtignore`` supports.

    ``name`` or ``*.glob`` matches a file or folder name at any depth;
    ``name/`` matches folders only; a pattern with a ``/`` inside
    (``models/raw``, ``/notes.md``) matches a path from the KRT folder's top.
    """

    glob: str
    folders_only: bool = False
    anchored: bool = False

    @classmethod
    def parse(cls, line: str) -> Pattern | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        folders_only = text.endswith("/")
        text = text.rstrip("/")
        anchored = "/" in text
        return cls(text.lstrip("/"), folders_only=folders_only, anchored=anchored) if text else None

    def matches(self, relative: PurePosixPath, *, is_folder: bool) -> bool:
        if self.folders_only and not is_folder:
            return False
        return fnmatch.fnmatchcase(str(relative) if self.anchored else relative.name, self.glob)


def exclusions(root: Path) -> list[Pattern]:
    """The default exclusions plus those of ``root/.krtignore``."""
    lines: Iterable[str] = DEFAULT_EXCLUDES
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines = [*lines, *read_text(ignore_file).splitlines()]
    return [pattern for pattern in map(Pattern.parse, lines) if pattern is not None]


def package_files(root: Path, left_out: list[str] | None = None) -> list[str]:
    """Every file of the KRT folder a package holds, as sorted paths relative to ``root``. A symlinked folder is
    followed and stored under the link's name (the real one, when it is in the folder too, under its own); a link
    back to a folder that holds it (the KRT folder, or one above it) is not followed, and its path is added to
    ``left_out``."""
    patterns = exclusions(root)
    found: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        here = PurePosixPath(Path(folder).relative_to(root).as_posix())
        kept = [name for name in subfolders if not _excluded(here / name, patterns, is_folder=True)]
        looping = [name for name in kept if _loops_back(root, Path(folder), name)]
        if left_out is not None:
            left_out += [str(here / name) for name in looping]
        subfolders[:] = sorted(name for name in kept if name not in looping)
        for name in files:
            if os.path.isfile(os.path.join(folder, name)) and not _excluded(here / name, patterns, is_folder=False):
                found.append(str(here / name))
    return sorted(found)


def _loops_back(root: Path, folder: Path, name: str) -> bool:
    """``folder/name`` is a link to ``folder`` or a folder that holds it (above it in the walk, the KRT folder, or
    any folder above that, up to ``/``): followed, it never ends, or packs what is around the KRT."""
    target = os.path.realpath(folder / name)
    above = folder
    while True:
        real = os.path.realpath(above)
        if os.path.commonpath([real, target]) == target:
            return True
        if above in (root, above.parent):
            return False
        above = above.parent


def _excluded(relative: PurePosixPath, patterns: list[Pattern], *, is_folder: bool) -> bool:
    return any(pattern.matches(relative, is_folder=is_folder) for pattern in patterns)


def write_package(root: Path, files: list[str], target: Path) -> int:
    """Write ``files`` of ``root`` (with their folders) to the gzip tarball ``target``; returns its size in bytes.

    Written to a temporary file first, so a failed build never leaves half a package behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
            _write_tar(root, files, packed)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target.stat().st_size


def _write_tar(root: Path, files: list[str], packed: gzip.GzipFile) -> None:
    # dereference: a symlink is stored as the file it points to, never as a link.
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
        for name in _with_folders(files):
            info = tar.gettarinfo(root / name, arcname=name)
            info.uid = info.gid = 0
            info.mtime = int(info.mtime)  # whole seconds: no pax header per file
            info.uname = info.gname = ""
            if info.isfile():
                with (root / name).open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)


def _with_folders(files: list[str]) -> list[str]:
    """The files and every folder above them, folders first (as ``tar`` writes them; some extractors need it)."""
    folders = {str(parent) for name in files for parent in PurePosixPath(name).parents if str(parent) != "."}
    return sorted(folders | set(files), key=lambda name: PurePosixPath(name).parts)


# -- reading a package ----------------------------------------------------------------------------


def is_package(path: Path | str) -> bool:
    """True for a ``.krt`` file (a folder is read as it is)."""
    return Path(path).suffix == SUFFIX and Path(path).is_file()


@contextmanager
def open_krt(source: Path | str) -> Iterator[Path]:
    """The KRT folder of ``source``: the folder itself, the folder of a ``krt.yml`` named as ``source``, or a ``.krt``
    unpacked into a temporary folder.

    The temporary folder is removed when the ``with`` ends, however it ends.
    Raises :class:`~krt_runner.errors.KrtFileError` for a package that cannot be read safely.
    """
    if not is_package(source):
        if Path(source).suffix == SUFFIX and not Path(source).exists():  # a mistyped package, not a folder
            raise KrtFileError(str(source), ["no such file: a .krt package is a file (krt-runner build writes one)"])
        yield krt_folder(Path(source))
        return
    with tempfile.TemporaryDirectory(prefix="krt-") as workdir:
        folder = Path(workdir) / Path(source).stem
        unpack(Path(source), folder)
        yield _krt_root(folder)


def krt_folder(path: Path) -> Path:
    """``path``, or the folder holding it when it is a ``krt.yml`` file itself."""
    return path.parent if path.name == KRT_FILE and path.is_file() else path


def unpack(archive: Path, into: Path) -> None:
    """Unpack ``archive`` into ``into``: plain files and folders only, each inside ``into``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            problems = _unsafe(members)
            if problems:
                raise KrtFileError(str(archive), problems)
            into.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+: tarfile repeats the checks above
                tar.extractall(into, members=members, filter="data")
            else:
                tar.extractall(into, members=members)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise KrtFileError(str(archive), [f"is not a .krt package (a gzip tarball): {exc}"]) from None


def _unsafe(members: list[tarfile.TarInfo]) -> list[str]:
    problems = []
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            problems.append(f"entry {member.name!r} would be written outside the package's folder: refused")
        elif not (member.isfile() or member.isdir()):
            problems.append(f"entry {member.name!r} is a link or a device: a .krt holds plain files and folders")
    if sum(member.size for member in members) > MAX_UNPACKED_BYTES:
        problems.append(f"unpacks to more than {MAX_UNPACKED_BYTES // 1024**3} GiB: refused")
    return problems


def _krt_root(folder: Path) -> Path:
    """``folder``, or its only subfolder when the package was made with ``tar czf x.krt FOLDER``."""
    if (folder / KRT_FILE).is_file():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and (entries[0] / KRT_FILE).is_file():
        return entries[0]
    return folder  # load_krt then says that krt.yml is missing


def human_size(size: int) -> str:
    """``812 B``, ``5.1 kB``, ``3.4 MB``: decimal units, as ``ls -h --si``."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
