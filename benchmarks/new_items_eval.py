"""Cold items: protocol N ("new items") of ``feast-autofeat evaluate`` on ML-100K or the synthetic catalogue.

The global temporal cut at 80% of the positives; the targets are each test user's positives on the items whose
first positive came after the cut (no model trained before it has seen them), ranked among those items only.
Rows: the category-popularity baseline, the two-tower with every learned group (item text included), the same
without the item text embedding, and the two-tower as ``train`` ships it (learned groups gated: the item text
kept or dropped on the inner validation and the inner new-items cut). Paired differences per user.

The item text: on ML-100K the film's title (a ``text_embedding_view`` over ``item_profile[["title"]]``, declared
here as a user would); on the synthetic catalogue the bundled repo's ``item_search`` (title and description, drawn
from category, brand and hidden factors). Encoder: the default all-MiniLM-L6-v2.

    python benchmarks/new_items_eval.py [--dataset ml-100k|synthetic] [--quick] [--users 4000]
                                        [--data-dir ../shared/data/ml-100k]

Saves benchmarks/results/new_items_<ml100k|synthetic>.json (``--quick``: new_items_quick_<...>.json, fewer
epochs) and the PNG ``evaluate`` draws beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, RESULTS, ml100k_repo, prepared_repo, save  # noqa: E402

# ML-100K's items have no text columns of their own beyond the title: a text view of it, and the bundled
# two-tower declared again with it among its item inputs (the later declaration of a name wins)
ML100K_TEXT = '''
from feast_autofeat import text_embedding_view

item_titles = text_embedding_view("item_titles", entity=item, inputs=[item_profile[["title"]]])
item_two_tower = two_tower(
    "item_two_tower", interactions=events, query=[*user_inputs, user_dae, user_gan_critic, session_multvae],
    items=[item_profile, session_multvae, item_titles], history=user_recent_items,
    fill={f"user_behaviour:{k}": v for k, v in behaviour_fill.items()})
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("ml-100k", "synthetic"), default="ml-100k")
    ap.add_argument("--quick", action="store_true", help="evaluate --quick's epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=ML100K, help="ML-100K's files")
    ap.add_argument("--users", type=int, default=4000, help="synthetic: users (items: as many)")
    args = ap.parse_args()
    synthetic = args.dataset == "synthetic"

    from feast_autofeat.recommend.evaluate import evaluate_repo, table_text

    t0 = time.perf_counter()
    if synthetic:
        from feast_autofeat.datasets.synthetic import SyntheticConfig

        prepared = prepared_repo("synthetic", config=SyntheticConfig(users=args.users, items=args.users,
                                                                     seed=args.seed))
    else:
        prepared = ml100k_repo(args.data_dir)
    name = ("new_items_quick_" if args.quick else "new_items_") + ("synthetic" if synthetic else "ml100k")
    with prepared as repo:
        if not synthetic:
            with open(repo / "features.py", "a") as f:
                f.write(ML100K_TEXT)
        result = evaluate_repo(repo, protocols=("N",), quick=args.quick, seed=args.seed,
                               out=RESULTS / f"{name}_evaluation.json",
                               say=lambda m: print(f"  {m}", flush=True), progress=True)
    n = result["protocols"]["N"]
    print(table_text(result["protocols"]))
    text = next(m.strip() for m in n["models"] if m.startswith("- "))
    with_text = n["paired"]["two-tower learned"]
    summary = {
        "dataset": args.dataset, "quick": args.quick, "seed": args.seed, "users": args.users if synthetic else None,
        "protocol": n["protocol"], "test_users": n["test_users"], "targets": n["targets"],
        "models": n["models"],
        "text_gain": {"row": f"two-tower learned minus two-tower learned {text}", **with_text[f"  {text}"]},
        "over_category_popularity": {m: p.get("category popularity") for m, p in n["paired"].items()},
        "shipped_keeps_text": bool(n["models"]["two-tower"].get("gate", {}).get(text[2:], {}).get("kept")),
        "gate": n["models"]["two-tower"].get("gate"), "seconds": time.perf_counter() - t0,
        "evaluation_json": Path(result["json"]).name}
    path = save(name, summary)
    g = summary["text_gain"]
    print(f"\nitem text gain (paired): Recall@20 {g['recall@20']['mean']:+.4f} ± {g['recall@20']['se']:.4f}, "
          f"NDCG@10 {g['ndcg@10']['mean']:+.4f} ± {g['ndcg@10']['se']:.4f}; shipped keeps text: "
          f"{summary['shipped_keeps_text']}\nsaved {path}")


if __name__ == "__main__":
    main()
