"""``python -m optical_ops.training``: the command line of :mod:`.cli`.

The trainer needs the ``[train]`` extra. Its modules are checked before :mod:`.cli` is imported
(its imports need them), so that a missing one is named with the extra to install instead of
surfacing as a bare ``ModuleNotFoundError``.
"""

import importlib.util
import sys

# What every command imports, all from the [train] extra (tomli: TOML configs before 3.11).
TRAIN_EXTRA_MODULES = ("numpy", "safetensors", "tqdm", "transformers") + (
    ("tomli",) if sys.version_info < (3, 11) else ())


def missing_train_extra() -> list[str]:
    """The modules of :data:`TRAIN_EXTRA_MODULES` that cannot be imported here."""
    return [name for name in TRAIN_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def run(argv=None) -> int:
    missing = missing_train_extra()
    if missing:
        print(f"python -m optical_ops.training needs the [train] extra (missing: "
              f"{', '.join(missing)}): pip install '.[train]' in a checkout of optical-ot, or "
              "pip install 'optical_ot-<version>-<tag>.whl[train]' (see the README's Install)",
              file=sys.stderr)
        return 1
    from .cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
