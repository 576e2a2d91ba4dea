"""Fine-tuning algorithms behind one registry (``ogpo.algos.base``).

Every module in this package that is not shared machinery is an algorithm and registers itself when
``load_registry()`` imports it (``get_algo`` and ``algorithms`` call it), so adding an algorithm is adding its
module. Importing the package itself stays cheap and free of import cycles.
"""

from __future__ import annotations

from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, algorithms, check_gcp_kind, get_algo, load_registry, register

__all__ = ["Agent", "AlgoSpec", "RunSeeds", "algorithms", "check_gcp_kind", "get_algo", "load_registry", "register"]
