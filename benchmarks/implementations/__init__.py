"""Every implementation the harness can run, ours first (the order of the table)."""

from __future__ import annotations

from .base import Calls, Implementation, Output
from .geomloss_peer import GeomLossTensorized
from .ott_peer import OttJax
from .ours import OursTorch, OursTriton
from .pot_peers import PotNumpy, PotTorchBatch, PotTorchSolve
from .reference import TorchCompiled, TorchReference

IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        OursTorch(), OursTriton(), PotNumpy(), PotTorchSolve(), PotTorchBatch(),
        GeomLossTensorized(), OttJax(), TorchReference(), TorchCompiled(),
    )
}

__all__ = ["IMPLEMENTATIONS", "Calls", "Implementation", "Output"]
