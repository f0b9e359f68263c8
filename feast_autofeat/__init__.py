"""feast-autofeat: learned features as first-class Feast feature views.

The public API, for a feature repo's Python files and for training code::

    from feast_autofeat import embedding_view, session_embedding_view, request_embedding_view
    from feast_autofeat import text_embedding_view, query_embedding_view
    from feast_autofeat import interactions, history_view, two_tower
    from feast_autofeat import train

Names load on first use, so ``import feast_autofeat`` stays cheap (the CLI's ``--help`` does not import torch).
"""

from feast_autofeat.errors import AutofeatError

__version__ = "0.1.0"

_LAZY = dict(
    embedding_view="feast_autofeat.feast.embeddings",
    session_embedding_view="feast_autofeat.feast.embeddings",
    request_embedding_view="feast_autofeat.feast.embeddings",
    text_embedding_view="feast_autofeat.feast.embeddings",
    query_embedding_view="feast_autofeat.feast.embeddings",
    interactions="feast_autofeat.feast.interactions",
    history_view="feast_autofeat.feast.interactions",
    two_tower="feast_autofeat.feast.interactions",
    train="feast_autofeat.training",
    Repo="feast_autofeat.repo",
)
__all__ = ["AutofeatError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'feast_autofeat' has no attribute {name!r}")
