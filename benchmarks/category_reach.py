"""Can the category term bring a category the user has not taken to into the top-10? A diagnostic of a trained
two-tower (the quickstart's by default), behind the feedback response figures (README, feedback loop).

For the first ``--users`` users the store knows: their search scores over the catalogue (as served: query,
category and popularity blocks; seen items excluded), then, for the category column (an item category column:
a genre, a category or brand value) with at least ``--min-items`` items that is least present in their top-10:

  gap   the 10th score minus the best score among that category's unseen items (how far it sits below the top-10)
  lift  what liking ``--liked`` of its most popular items can add to that best item: at most category_weight x
        the cosine between its categories and those liked items' (an upper bound: the recent items the likes push
        out and the session steering are ignored)

and the spread of the scores themselves (1st - 10th, 1st - 100th). ``reach`` is the share of users whose lift
covers the gap.

    feast-autofeat quickstart && python benchmarks/category_reach.py [--repo feature_repo] [--users 300]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "feature_repo")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--liked", type=int, default=6)
    ap.add_argument("--min-items", type=int, default=20)
    args = ap.parse_args()
    import feast  # noqa: F401 - Feast resets the DeprecationWarning filter when imported
    import torch
    import torch.nn.functional as F

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from feast_autofeat.feast.embeddings import view_name
    from feast_autofeat.recommend.recommender import Recommender

    t_start = time.perf_counter()
    try:
        rec = Recommender(args.repo)
        b = rec._current()
    except Exception as exc:  # any missing piece (repo, store, model) means the same here
        raise SystemExit(f"no served two-tower in {args.repo}: {exc} (or run `feast-autofeat quickstart`)") from None
    m = b.model
    units = m._category_units()
    if units is None:
        raise SystemExit(f"two-tower {b.version} has no category term (no category columns or weight 0).")
    ids, vecs = rec._item_vectors(view_name("item_two_tower", b.version))
    rows = m.item_rows(ids)
    search = m.search_item_vectors(vecs, ids)  # as the index holds them
    cats = m.item_cats_.numpy()[np.maximum(rows - 1, 0)] * (rows > 0)[:, None]  # 0/1, in ``ids`` order
    columns = np.flatnonzero(cats.sum(0) >= args.min_items)
    popularity = m.log_popularity()[rows]
    weight = m.config.category_weight
    gaps, lifts, spread10, spread100 = [], [], [], []
    for user in range(1, 10 * args.users):
        if len(gaps) == args.users:
            break
        q, seen = rec.query(user)
        if q is None:
            continue
        scores = search @ q
        scores[np.isin(ids, seen)] = -np.inf
        order = np.argsort(-scores)
        top = order[:10]
        spread10.append(scores[order[0]] - scores[order[9]])
        spread100.append(scores[order[0]] - scores[order[99]])
        c = columns[np.argmin(cats[top][:, columns].mean(0))]  # the least present in the top-10
        members = np.flatnonzero((cats[:, c] == 1) & np.isfinite(scores))
        if len(members) <= args.liked:
            continue
        liked = members[np.argsort(-popularity[members], kind="stable")[:args.liked]]
        rest = np.setdiff1d(members, liked)
        best = rest[np.argmax(scores[rest])]
        session = F.normalize(units[torch.from_numpy(rows[liked])].mean(0), dim=0)
        gaps.append(scores[top[-1]] - scores[best])
        lifts.append(weight * float(units[int(rows[best])] @ session))
    gaps, lifts = np.array(gaps), np.array(lifts)
    result = {"repo": str(args.repo), "model_version": b.version, "users": len(gaps), "liked": args.liked,
              "category_weight": weight, "category_columns": int(len(columns)),
              "median_top1_minus_top10": float(np.median(spread10)),
              "median_top1_minus_top100": float(np.median(spread100)),
              "median_gap_to_top10": float(np.median(gaps)), "median_lift_bound": float(np.median(lifts)),
              "reach": float(np.mean(lifts >= gaps)), "gap_quartiles": np.percentile(gaps, [25, 50, 75]).tolist(),
              "script_seconds": time.perf_counter() - t_start}
    print(f"two-tower {b.version}, {len(gaps)} users, category weight {weight}")
    print(f"score spread: 1st - 10th {result['median_top1_minus_top10']:.3f}, 1st - 100th "
          f"{result['median_top1_minus_top100']:.3f} (medians)")
    print(f"least-present category: its best unseen item sits {result['median_gap_to_top10']:.3f} below the 10th "
          f"score (quartiles {', '.join(f'{g:.3f}' for g in result['gap_quartiles'])}); liking {args.liked} of its "
          f"items can lift it by at most {result['median_lift_bound']:.3f}; the lift covers the gap for "
          f"{result['reach']:.0%} of users")
    print(f"saved {save('category_reach', result)}")


if __name__ == "__main__":
    main()
