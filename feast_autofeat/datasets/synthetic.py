"""A seeded e-commerce event generator: the embedded default for the quickstart and fast tests.

Behaviour is driven by hidden structure that learned features should be able to recover:

- users and items have latent factors; items cluster by category, and brands shift them a little;
- item popularity is long-tailed (log-normal), and some items launch during the period;
- user activity is long-tailed too, users sign up over time, and each user's taste drifts linearly
  towards a second direction over the period (preference drift);
- each interaction walks a browse -> click -> cart -> purchase funnel whose depth grows with the
  user-item affinity and shrinks with price;
- each item has a title and a description (``item_texts``) drawn from its category, its brand and its hidden
  factors: a noun of its category chosen by where the item lies within the category, and adjectives named after
  its strongest factors, so text carries part of the taste structure (for search and cold items).

Items are drawn per interaction by sampling-importance-resampling: candidates from the popularity
distribution, one of them picked with probability proportional to exp(affinity / temperature). Everything
is vectorized in chunks with per-chunk seeds, so the output depends only on the seed and the parameters and
10M events fit comfortably in memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from feast_autofeat.datasets.base import DatasetSpec
from feast_autofeat.errors import DataError

EVENT_TYPES = ("browse", "click", "cart", "purchase")
CATEGORIES = (
    "electronics", "computers", "phones", "home", "kitchen", "garden",
    "fashion", "shoes", "beauty", "sports", "toys", "books",
)  # fmt: skip
COUNTRIES = ("us", "gb", "de", "fr", "in", "br", "jp", "ca")
CHANNELS = ("organic", "search_ads", "social", "referral")
GENDERS = ("F", "M", "X")
NOUNS = {  # per category: which one an item gets depends on its hidden factors
    "electronics": ("headphones", "speaker", "camera", "charger", "smartwatch", "projector"),
    "computers": ("laptop", "monitor", "keyboard", "mouse", "router", "tablet"),
    "phones": ("smartphone", "phone case", "screen protector", "power bank", "earbuds", "phone stand"),
    "home": ("lamp", "cushion", "rug", "curtain", "bookshelf", "mirror"),
    "kitchen": ("frying pan", "knife set", "blender", "kettle", "saucepan", "coffee maker"),
    "garden": ("garden hose", "pruning shears", "flower pot", "lawn mower", "bird feeder", "planter"),
    "fashion": ("jacket", "dress", "scarf", "sweater", "jeans", "handbag"),
    "shoes": ("running shoe", "boot", "sneaker", "sandal", "loafer", "slipper"),
    "beauty": ("moisturizer", "shampoo", "lipstick", "perfume", "face serum", "hair dryer"),
    "sports": ("yoga mat", "dumbbell set", "tennis racket", "bicycle helmet", "football", "water bottle"),
    "toys": ("puzzle", "building blocks", "doll", "toy car", "board game", "plush bear"),
    "books": ("novel", "cookbook", "biography", "travel guide", "comic book", "poetry collection"),
}
ADJECTIVES = (  # factor j's positive and negative direction (factors beyond 16 reuse them, j % 16)
    ("premium", "budget"), ("compact", "oversized"), ("classic", "modern"), ("lightweight", "heavy-duty"),
    ("eco-friendly", "high-performance"), ("vintage", "futuristic"), ("minimalist", "colorful"),
    ("wireless", "handcrafted"), ("waterproof", "soft"), ("professional", "beginner"), ("portable", "sturdy"),
    ("quiet", "powerful"), ("luxury", "everyday"), ("smart", "simple"), ("travel", "family"),
    ("organic", "industrial"),
)
BRAND_STEMS = ("Vol", "Nor", "Kas", "Bel", "Tor", "Mir", "Zen", "Lux", "Ori", "Pax", "Quin", "Ash")
BRAND_ENDS = ("tek", "via", "ora", "ine", "ex", "ano", "ium", "ar")  # a category's 8 brands: stem + end

SPEC = DatasetSpec(
    name="synthetic",
    description="Seeded synthetic e-commerce events (browse / click / cart / purchase).",
    signals=tuple((t, f"e.event_type = '{t}'") for t in EVENT_TYPES),
    categories=tuple((c, f"i.category = '{c}'") for c in CATEGORIES),
    user_profile=(("age", "Int64"), ("gender", "String"), ("country", "String"), ("signup_channel", "String")),
    item_profile=(("category", "String"), ("brand", "String"), ("price", "Float64")),
    item_text=(("title", "String"), ("description", "String")),
    positive="e.event_type <> 'browse'",  # a click or deeper in the funnel
    event_types=EVENT_TYPES,
)

_DAY_US = 86_400 * 1_000_000
_CHUNK = 250_000  # max interactions per chunk; chunking depends only on the parameters, so output does too


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 2_000
    items: int = 500
    days: int = 60
    events: int | None = None  # default: 60 events per user
    seed: int = 0
    start: str = "2025-01-01"
    factors: int = 16
    drift: float = 0.5  # share of a user's taste that has moved to a new direction by the last day
    candidates: int = 32
    temperature: float = 0.35
    popularity_skew: float = 1.5  # std of the items' log popularity: larger, a heavier head (sparse logs: 2.5)

    def __post_init__(self) -> None:
        for name in ("users", "items", "days"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.events is not None and self.events < 1:
            raise DataError(f"--events must be at least 1, got {self.events}.")
        if not 0.0 <= self.popularity_skew <= 5.0:
            raise DataError(f"--popularity-skew must lie in [0, 5], got {self.popularity_skew}.")
        if not 0.0 <= self.drift <= 1.0:
            raise DataError(f"drift must lie in [0, 1], got {self.drift}.")

    @property
    def n_events(self) -> int:
        return self.events if self.events is not None else 60 * self.users

    def params(self) -> dict:
        return {**asdict(self), "events": self.n_events}


def brand_names(item_cat: np.ndarray, brand_rank: np.ndarray) -> np.ndarray:
    """The display name of brand ``brand_rank`` (0-7) of category index ``item_cat``: unique per pair."""
    return np.char.add(np.asarray(BRAND_STEMS)[item_cat], np.asarray(BRAND_ENDS)[brand_rank])


def item_texts(item_cat: np.ndarray, brand_rank: np.ndarray, item_vec: np.ndarray, centroids: np.ndarray,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(titles, descriptions) from each item's category, brand and hidden factors, vectorized. The noun is the
    category's noun whose (seeded) direction is nearest the item's offset from its category centre; the
    adjectives name the offset's three strongest factors, by sign. Same inputs, same texts."""
    rng = np.random.default_rng([seed, 2])  # its own stream: the events do not depend on the texts
    k = item_vec.shape[1]
    n_nouns = len(NOUNS[CATEGORIES[0]])
    offset = item_vec - centroids[item_cat]
    directions = rng.normal(size=(len(CATEGORIES), n_nouns, k))
    noun_idx = np.argmax(np.einsum("nk,nvk->nv", offset, directions[item_cat]), axis=1)
    noun = np.asarray([NOUNS[c] for c in CATEGORIES])[item_cat, noun_idx]
    top = np.argsort(-np.abs(offset), axis=1, kind="stable")[:, :3]
    sign = np.take_along_axis(offset, top, axis=1) < 0
    adj = np.asarray(ADJECTIVES)[top % len(ADJECTIVES), sign.astype(np.int64)]  # (n, 3)
    brand, category = brand_names(item_cat, brand_rank), np.asarray(CATEGORIES)[item_cat]
    title = _join(brand, " ", np.char.capitalize(adj[:, 0]), " ", np.char.title(noun))
    description = _join(np.char.capitalize(adj[:, 0]), " and ", adj[:, 1], " ", noun, " by ", brand, ". A ",
                        adj[:, 2], " pick in ", category, ".")
    return title, description


def _join(*parts) -> np.ndarray:
    """Element-wise string concatenation of arrays and scalars."""
    return functools.reduce(np.char.add, parts)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate(cfg: SyntheticConfig, progress: Callable[[int], None] | None = None) -> dict[str, pa.Table]:
    """Generate interactions, users and items. ``progress(n)`` is called with events added per chunk."""
    rng = np.random.default_rng([cfg.seed, 0])
    k, n_u, n_i, days = cfg.factors, cfg.users, cfg.items, float(cfg.days)
    start_us = int(np.datetime64(cfg.start, "us").astype(np.int64))

    # ---- items: category clusters, brands, long-tailed popularity, launches during the period
    n_cat = len(CATEGORIES)
    centroids = _unit_rows(rng.normal(size=(n_cat, k))) * 2.0
    cat_share = rng.dirichlet(np.full(n_cat, 2.0))
    item_cat = rng.choice(n_cat, size=n_i, p=cat_share)
    brand_rank = np.minimum(rng.zipf(1.6, size=n_i), 8) - 1  # a few big brands per category
    brand_vec = rng.normal(scale=0.4, size=(n_cat, 8, k))
    item_vec = centroids[item_cat] + brand_vec[item_cat, brand_rank] + rng.normal(scale=0.6, size=(n_i, k))
    item_vec = item_vec.astype(np.float32)
    log_pop = rng.normal(scale=1.0, size=n_i) * cfg.popularity_skew
    pop_cdf = np.cumsum(np.exp(log_pop - log_pop.max()))
    pop_cdf /= pop_cdf[-1]
    cat_price = rng.uniform(2.5, 5.5, size=n_cat)
    price = np.round(np.exp(cat_price[item_cat] + rng.normal(scale=0.6, size=n_i)), 2)
    launched = rng.random(n_i) < 0.25
    launch_day = np.where(launched, rng.uniform(0, 0.9 * days, size=n_i), 0.0)
    item_created = np.where(launched, launch_day, -rng.uniform(0, 365, size=n_i))

    # ---- users: taste = mix of two categories, drifting towards a third direction; long-tailed activity
    fav = rng.integers(0, n_cat, size=(n_u, 2))
    taste0 = centroids[fav[:, 0]] + 0.5 * centroids[fav[:, 1]] + rng.normal(scale=0.5, size=(n_u, k))
    taste1 = centroids[rng.integers(0, n_cat, size=n_u)] + rng.normal(scale=0.5, size=(n_u, k))
    taste0, taste1 = taste0.astype(np.float32), taste1.astype(np.float32)
    activity = rng.lognormal(sigma=1.0, size=n_u)
    act_cdf = np.cumsum(activity) / activity.sum()
    new_user = rng.random(n_u) < 0.4
    signup_day = np.where(new_user, rng.uniform(0, 0.8 * days, size=n_u), 0.0)
    user_created = np.where(new_user, signup_day, -rng.uniform(0, 365, size=n_u))
    age = np.clip(rng.normal(36, 12, size=n_u), 16, 85).astype(np.int64)

    # ---- interactions, chunk by chunk, until the event budget is met
    n_target = cfg.n_events
    chunks: list[tuple[np.ndarray, ...]] = []
    total, chunk_id = 0, 0
    while total < n_target:
        crng = np.random.default_rng([cfg.seed, 1, chunk_id])
        # about 1.55 events per interaction: size the chunk to what is still needed, capped for memory
        m = min(_CHUNK, (n_target - total) * 3 // 4 + 1_000)
        u = np.minimum(np.searchsorted(act_cdf, crng.random(m)), n_u - 1)
        t = signup_day[u] + crng.random(m) * (days - signup_day[u])  # in days since start
        cand = np.minimum(np.searchsorted(pop_cdf, crng.random((m, cfg.candidates))), n_i - 1)
        alpha = (cfg.drift * t / days).astype(np.float32)[:, None]
        taste = (1 - alpha) * taste0[u] + alpha * taste1[u]
        score = np.einsum("mk,mck->mc", taste, item_vec[cand]) / np.float32(np.sqrt(k))
        score = np.where(launch_day[cand] <= t[:, None], score, -np.inf)  # only launched items
        gumbel = -np.log(-np.log(crng.random(score.shape, dtype=np.float32) + 1e-12) + 1e-12)
        pick = np.argmax(score / cfg.temperature + gumbel, axis=1)
        item = cand[np.arange(m), pick]
        aff = score[np.arange(m), pick]
        ok = np.isfinite(aff)  # all candidates unlaunched: drop (rare)
        u, t, item, aff = u[ok], t[ok], item[ok], aff[ok]

        # funnel depth: 0 browse, 1 +click, 2 +cart, 3 +purchase
        p_click = 1 / (1 + np.exp(-(1.5 * aff - 0.5)))
        p_cart = 1 / (1 + np.exp(-(1.5 * aff - 1.0 - 0.3 * (np.log(price[item]) - 4.0))))
        r = crng.random((u.size, 3))
        depth = (r[:, 0] < p_click).astype(np.int64)
        depth += depth * (r[:, 1] < p_cart)
        depth += (depth == 2) * (r[:, 2] < 0.45)
        reps = depth + 1
        ev_u, ev_i = np.repeat(u, reps), np.repeat(item, reps)
        first = np.repeat(np.cumsum(reps) - reps, reps)
        step = np.arange(ev_u.size) - first  # 0..depth within the funnel = event type
        gaps = crng.exponential(90.0, size=ev_u.size) * (step > 0)  # seconds between funnel steps
        cum = np.cumsum(gaps)
        offset = cum - cum[first]
        ts = start_us + (np.repeat(t, reps) * _DAY_US).astype(np.int64) + (offset * 1e6).astype(np.int64)
        chunks.append((ev_u, ev_i, step.astype(np.int8), ts))
        total += ev_u.size
        chunk_id += 1
        if progress is not None:
            progress(min(ev_u.size, n_target - (total - ev_u.size)))

    ev_u, ev_i, ev_t, ts = (np.concatenate(cols)[:n_target] for cols in zip(*chunks))
    # Events beyond the period's end (funnel gaps at the very end) are clipped to the period.
    ts = np.minimum(ts, start_us + int(days * _DAY_US) - 1)
    order = np.argsort(ts, kind="stable")
    utc = pa.timestamp("us", tz="UTC")
    interactions = pa.table({
        "user_id": pa.array(ev_u[order] + 1, pa.int64()),
        "item_id": pa.array(ev_i[order] + 1, pa.int64()),
        "event_type": pa.DictionaryArray.from_arrays(
            pa.array(ev_t[order], pa.int8()), pa.array(EVENT_TYPES)).cast(pa.string()),
        "event_timestamp": pa.array(ts[order], utc),
    })
    title, description = item_texts(item_cat, brand_rank, item_vec, centroids, cfg.seed)
    users = pa.table({
        "user_id": pa.array(np.arange(1, n_u + 1), pa.int64()),
        "age": pa.array(age, pa.int64()),
        "gender": pa.array(np.asarray(GENDERS)[rng.choice(3, size=n_u, p=[0.49, 0.49, 0.02])]),
        "country": pa.array(np.asarray(COUNTRIES)[np.minimum(rng.zipf(1.8, size=n_u), len(COUNTRIES)) - 1]),
        "signup_channel": pa.array(np.asarray(CHANNELS)[rng.choice(len(CHANNELS), size=n_u)]),
        "created_timestamp": pa.array(start_us + (user_created * _DAY_US).astype(np.int64), utc),
    })
    items = pa.table({
        "item_id": pa.array(np.arange(1, n_i + 1), pa.int64()),
        "category": pa.array(np.asarray(CATEGORIES)[item_cat]),
        "brand": pa.array(np.char.add(np.asarray(CATEGORIES)[item_cat],
                                      np.char.add("_brand_", brand_rank.astype(str)))),
        "price": pa.array(price, pa.float64()),
        "title": pa.array(title),
        "description": pa.array(description),
        "created_timestamp": pa.array(start_us + (item_created * _DAY_US).astype(np.int64), utc),
    })
    return {"interactions": interactions, "users": users, "items": items}
