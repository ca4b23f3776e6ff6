"""Packaging for optical-ot: one distribution, three import packages.

``kernels/`` and ``training/`` install as ``optical_ops.kernels`` and ``optical_ops.training``
(a top-level ``kernels`` package already exists on PyPI).

torch is a run-time dependency but is never pinned here: install the build you want first
(``pip install torch==2.13.0`` takes the local CPU wheel on the project machines).
"""

from setuptools import setup

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
    install_requires=["torch>=2.1", "numpy"],
    extras_require={
        "triton": ["triton>=3.0"],
        "train": ["transformers>=4.40", "safetensors", "tqdm"],
        "bench": ["POT>=0.9.5", "pytest-benchmark", "matplotlib"],
        "dev": [
            "triton>=3.0",
            "transformers>=4.40",
            "safetensors",
            "tqdm",
            "POT>=0.9.5",
            "pytest-benchmark",
            "matplotlib",
            "pytest",
            "ruff",
            "hypothesis",
        ],
    },
)
