"""Search: ``Recommender.search(q, user_id=None, k=10)``, text queries over the items' text view, personalized
by the two-tower.

Two stages, as production search does it:

1. **Retrieve** the ``candidates`` items whose text vectors (the repo's ``text_embedding_view`` of the item
   entity, its live version's materialized vectors) are nearest the query's vector (the same text version: the
   query and the items share one space), from an item index of their own (exact, or IVF on a large catalogue).
2. **Rank** them by ``z(text similarity) + weight * z(two-tower score)``: each term standardized over the
   candidates (so the weight does not depend on either model's scale), the two-tower score being what
   ``recommend`` ranks by for this user (their query-tower vector against the items' search vectors).
   A user the store does not know, or no ``user_id``, ranks by text alone (``source="text"``); a candidate the
   two-tower has no vector for (a new item, text only) gets the candidates' average two-tower score (z = 0).

``weight`` 0 is text search; a large weight is the user's recommendations restricted to the query's candidates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from feast_autofeat.errors import AutofeatError
from feast_autofeat.ids import positions
from feast_autofeat.recommend.index import build_index

log = logging.getLogger(__name__)
CANDIDATES = 200  # items retrieved by text before ranking
SEARCH_WEIGHT = 1.0  # the two-tower term's weight against the text term (both standardized)


class SearchUnavailable(AutofeatError):
    """The repo declares no text view of the recommender's items, or it has no live, materialized version."""


@dataclass(frozen=True)
class SearchResult:
    user_id: object  # None: no user given
    items: list
    scores: list[float]  # the fused score (text only: the standardized text similarity)
    source: str  # "personalized" or "text" (no user, or one the store does not know)
    model_version: str | None  # the two-tower version that personalized it (None: text only)
    text_version: str  # the text version that embedded the query and the items

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TextSide:
    """One live version of the item text view: its encoder (for queries) and the index of the items' vectors."""

    view: str
    version: str
    encoder: object  # models.text.TextEncoder
    index: object


def item_text_view(project, decl, name: str | None = None):
    """The repo's text view of the two-tower's item entity: ``name``, or the only one, or None (none declared;
    more than one: an error)."""
    from feast_autofeat.feast.embeddings import TextEmbeddingView

    key = decl.interactions.item_key
    if name:
        view = project.declaration(name, ("embedding",))
        if not isinstance(view, TextEmbeddingView) or getattr(view.entity, "join_key", None) != key:
            raise SearchUnavailable(f"{name} is not a text_embedding_view of {key}, the items of {decl.name}: "
                                    "name one that is (`serve --search-view NAME`).")
        return view
    found = [d for d in project.declarations.values()
             if isinstance(d, TextEmbeddingView) and getattr(d.entity, "join_key", None) == key]
    if len(found) > 1:
        raise SearchUnavailable(f"{project.path} declares {len(found)} text views of {key} "
                                f"({', '.join(sorted(d.name for d in found))}): pass search_view= to the Recommender "
                                "(`serve --search-view NAME`).")
    return found[0] if found else None


def load_text_side(store, root, view, version: str, item_key: str, kind: str = "auto") -> TextSide:
    """Verify and load text ``version`` of ``view`` and index its materialized item vectors."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.runtime import load_encoder
    from feast_autofeat.recommend.health import latest_vectors

    encoder = load_encoder(str(root), "text", version).text
    encoder.warm()  # the one-query path is built here, at start, not on the first search
    ids, vectors = latest_vectors(store, view_name(view, version), item_key)
    if not len(ids):
        raise SearchUnavailable(f"{view_name(view, version)} has no materialized vectors: run `feast materialize` "
                                f"after `feast-autofeat deploy {view}`.")
    return TextSide(view, version, encoder, build_index(ids, vectors, kind))


def standardize(scores: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last axis; a constant row gives zeros."""
    scores = np.asarray(scores, np.float64)
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    return np.divide(scores - mean, std, out=np.zeros_like(scores), where=std > 1e-12)


def fuse(text: np.ndarray, user: np.ndarray | None, weight: float, known: np.ndarray | None = None) -> np.ndarray:
    """``z(text) + weight * z(user)`` over one query's candidates; ``known``: which candidates have a two-tower
    score (the others count as the known ones' average: z = 0)."""
    fused = standardize(text)
    if user is None or weight == 0:
        return fused
    known = np.ones(len(user), bool) if known is None else np.asarray(known, bool)
    z = np.zeros(len(user))
    if known.any():
        z[known] = standardize(np.asarray(user, np.float64)[known])
    return fused + weight * z


def user_scores(search_ids: np.ndarray, search_vectors: np.ndarray, candidates: np.ndarray,
                query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the two-tower score of each candidate for a query-tower vector, which candidates the model has); the
    search vectors' ids are sorted."""
    pos = positions(search_ids, candidates)
    known = pos >= 0
    scores = np.zeros(len(candidates))
    if known.any():
        scores[known] = search_vectors[pos[known]] @ np.asarray(query, np.float32)
    return scores, known
