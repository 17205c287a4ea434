"""``dheera_ai``: the seed docs' name for :mod:`dheera_local`, so their examples run verbatim.

``import dheera_ai`` and ``from dheera_ai import rerank, arerank`` give dheera_local's own objects (the
same functions, classes and errors: ``dheera_ai.RerankResponse is dheera_local.RerankResponse``), loaded
as lazily as there. Submodules keep their one home under dheera_local (``dheera_local.testing``,
``dheera_local.server``): a second import path would load them twice, as different classes.
"""

import dheera_local as _dheera_local
from dheera_local import __all__, __version__  # noqa: F401 (re-exported: `from dheera_ai import *`)


def __getattr__(name: str) -> object:
    return getattr(_dheera_local, name)


def __dir__() -> list[str]:
    return dir(_dheera_local)
