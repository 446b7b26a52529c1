"""Where dataset files live, and how they get there (archive extraction, download).

Lookup order, first match wins: the explicit ``data_dir`` (CLI ``--data-dir``),
``$PRUNUS_DATA``, the cache (``$XDG_CACHE_HOME/prunus`` or ``~/.cache/prunus``),
then :data:`SYSTEM_ROOT` (``/usr/share/datasets``, where Debian's
``dataset-fashion-mnist`` installs).  In each root both ``<root>/<name>/`` and
``<root>/`` itself are tried, except that a root named after a *different*
dataset is skipped (``$PRUNUS_DATA=/data/mnist`` never serves Fashion-MNIST,
whose IDX files have the same names).  Everything written (extracted folders,
downloads) goes to the cache via a temporary name and ``os.replace``, so a
crash never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from prunus.data.cifar import LAYOUTS
from prunus.data.idx import SPLIT_FILES, find_idx_file
from prunus.errors import DataError
from prunus.io import atomic_write

if TYPE_CHECKING:
    from prunus.data.datasets import DatasetSpec

SYSTEM_ROOT = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The prunus cache root: ``$XDG_CACHE_HOME/prunus``, else ``~/.cache/prunus``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "prunus"


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The roots searched, in priority order."""
    roots = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("PRUNUS_DATA"):
        roots.append(Path(os.environ["PRUNUS_DATA"]).expanduser())
    return roots + [cache_dir(), SYSTEM_ROOT]


def candidate_dirs(root: Path, name: str, folder: str | None, other_names: Sequence[str]) -> list[Path]:
    """Directories of ``root`` that may hold dataset ``name`` (``folder``: CIFAR's extracted folder)."""
    bases = [root / name]
    if root.name not in other_names:
        bases.append(root)
    if folder is None:
        return bases
    return [d for base in bases for d in (base / folder, base)]


def find_dir(roots: Sequence[Path], name: str, folder: str | None, has_files: Callable[[Path], bool],
             other_names: Sequence[str] = ()) -> Path | None:
    """First candidate directory, in root order, for which ``has_files`` is true."""
    for root in roots:
        for d in candidate_dirs(root, name, folder, other_names):
            if d.is_dir() and has_files(d):
                return d
    return None


def find_archive(roots: Sequence[Path], name: str, archive: str, other_names: Sequence[str] = ()) -> Path | None:
    """First ``archive`` file found in the same candidate directories."""
    for root in roots:
        for d in candidate_dirs(root, name, None, other_names):
            if (d / archive).is_file():
                return d / archive
    return None


def extract_archive(archive: Path, folder: str, dest: Path) -> Path:
    """Safely extract ``folder`` from a .tar.gz into ``dest/folder`` (atomic rename)."""
    target = dest / folder
    if target.is_dir():
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    except OSError as exc:
        raise DataError(f"cannot write to the cache {dest} ({exc.strerror or exc}); set $XDG_CACHE_HOME "
                        f"to a writable directory or extract {archive} yourself.") from exc
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', links out, devices
        if not (tmp / folder).is_dir():
            raise DataError(f"archive {archive} has no {folder}/ folder; use the official archive.")
        try:
            os.replace(tmp / folder, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race: fine
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"cannot extract archive {archive} ({exc}); re-download it.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def open_url(url: str) -> BinaryIO:
    """Open ``url`` for reading; tests replace this to stay off the network."""
    return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)


def fetch_url(url: str, dest: Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` via a temp file and ``os.replace``; check ``md5`` if given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with atomic_write(dest, suffix=".part") as tmp:
            with open(tmp, "wb") as out, open_url(url) as response:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
            if md5 is not None and digest.hexdigest() != md5:
                raise DataError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}; "
                                f"retry, or fetch the file by hand into {dest.parent}.")
    except (urllib.error.URLError, OSError, EOFError) as exc:  # URLError/HTTPError/timeouts are OSErrors
        raise DataError(f"download of {url} failed ({exc}); check the network or put the file in "
                        f"{dest.parent} yourself.") from exc
    return dest


def download_dataset(spec: DatasetSpec) -> Path:
    """Fetch ``spec.urls`` into ``cache_dir()/<name>`` (files already there are kept)."""
    dest = cache_dir() / spec.name
    for url, md5 in spec.urls:
        target = dest / url.rsplit("/", 1)[-1]
        if not target.is_file():
            fetch_url(url, target, md5)
    if spec.format == "cifar":
        folder, archive, _, _ = LAYOUTS[spec.name]
        return extract_archive(dest / archive, folder, dest)
    return dest


def _how_to_get(spec: DatasetSpec, split: str) -> str:
    if spec.format == "cifar":
        folder, archive, _, _ = LAYOUTS[spec.name]
        what = f"the extracted {folder} folder or {archive}"
    else:
        what = "the IDX files ({} and {}, optionally .gz)".format(*SPLIT_FILES[split])
    apt = f"install it with `apt install {spec.apt_package}`, " if spec.apt_package else ""
    return f"{apt}put {what} in --data-dir or $PRUNUS_DATA, or pass --download"


def locate_dataset(spec: DatasetSpec, split: str, data_dir: str | Path | None = None, download: bool = False,
                   other_names: Sequence[str] = ()) -> Path:
    """Directory holding ``split`` of a file-based dataset, extracting or downloading if needed."""
    roots = search_roots(data_dir)
    if spec.format == "cifar":
        folder, archive, files, _ = LAYOUTS[spec.name]

        def has_files(d: Path) -> bool:
            return all((d / f).is_file() for f in files[split])
    else:
        folder = archive = None

        def has_files(d: Path) -> bool:
            return all(find_idx_file(d, f) is not None for f in SPLIT_FILES[split])

    found = find_dir(roots, spec.name, folder, has_files, other_names)
    if found is None and archive is not None and folder is not None:
        tar = find_archive(roots, spec.name, archive, other_names)
        if tar is not None:
            found = extract_archive(tar, folder, cache_dir() / spec.name)
    if found is None and download:
        found = download_dataset(spec)
    if found is None:
        looked = ", ".join(str(r) for r in roots)
        raise DataError(f"{spec.title} not found (looked in: {looked}); {_how_to_get(spec, split)}.")
    if not has_files(found):
        raise DataError(f"{found} lacks files of the {spec.title} {split} split; delete it and retry.")
    return found
