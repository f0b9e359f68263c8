"""Personalized search quality on ML-100K or the synthetic catalogue (``feast_autofeat.recommend.search_eval``
documents the protocol).

Protocol P's split (each user's last 20% of positives are the test interactions, their earlier positives the
history the store knew); the encoders and the shipped two-tower trained on the training events only, as
``feast-autofeat evaluate`` does. Each test interaction's query is built from its target item, never from its
title: on ML-100K the film's genres ("action thriller"), the items' text "title. genres"; on the synthetic
catalogue the item's category and brand name ("shoes Norine"), the items' text "title. description" (the
generator draws both from category, brand and hidden factors). Text is embedded with the default
all-MiniLM-L6-v2. Rows: BM25 over the items' text (bm25s), the text embedding alone, the two-tower without the
query, and personalized search (``Recommender.search``'s ranking) at its default weight and a few others.

    python benchmarks/search_eval.py [--dataset ml-100k|synthetic] [--quick] [--weights 1 0.5 2 4]
                                     [--data-dir ../shared/data/ml-100k] [--users 2000]

Saves benchmarks/results/search_eval_<ml100k|synthetic>.json (``--quick``: search_eval_quick_<...>.json, fewer
epochs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, ml100k_repo, prepared_repo, save  # noqa: E402

from feast_autofeat.recommend.search_eval import PERSONALIZED, search_pairs, search_table  # noqa: E402


def item_texts_and_queries(data: Path) -> tuple[pd.Series, pd.Series]:
    """(item id -> "title. genre, genre", item id -> "genre genre" lowercased) from the prepared items table;
    films with no genre but "unknown" have no query."""
    items = pd.read_parquet(data / "items.parquet").drop_duplicates("item_id", keep="last").set_index("item_id")
    genres = [c for c in items.columns if c.startswith("genre_") and c != "genre_unknown"]
    names = [c.removeprefix("genre_").replace("_", " ") for c in genres]
    flags = items[genres].fillna(0).to_numpy() > 0
    listed = [[n for n, f in zip(names, row) if f] for row in flags]
    texts = pd.Series([f"{t}. {', '.join(g)}" if g else str(t) for t, g in zip(items.title, listed)], items.index)
    queries = pd.Series([" ".join(g).lower() for g in listed], items.index)
    return texts, queries[queries != ""]


def synthetic_texts_and_queries(data: Path) -> tuple[pd.Series, pd.Series]:
    """(item id -> "title. description", item id -> "category brand") from the synthetic items table; the brand
    name is the title's first word."""
    items = pd.read_parquet(data / "items.parquet").drop_duplicates("item_id", keep="last").set_index("item_id")
    texts = items.title + ". " + items.description
    return texts, items.category + " " + items.title.str.split(" ").str[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="evaluate --quick's epochs")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 2.0, 4.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=("ml-100k", "synthetic"), default="ml-100k")
    ap.add_argument("--data-dir", type=Path, default=ML100K, help="ML-100K's files")
    ap.add_argument("--users", type=int, default=2000, help="synthetic: users (items: a quarter as many)")
    args = ap.parse_args()
    synthetic = args.dataset == "synthetic"

    from feast_autofeat.models.text import default_encoder_dir, load_text_encoder, save_text_version
    from feast_autofeat.recommend.data import positive_events
    from feast_autofeat.recommend.evaluate import QUICK, protocol_p, train_encoders, workspace
    from feast_autofeat.recommend.train import TrainingSet, validation
    from feast_autofeat.repo import Repo

    t0 = time.perf_counter()
    cwd = os.getcwd()
    if synthetic:
        from feast_autofeat.datasets.synthetic import SyntheticConfig

        prepared = prepared_repo("synthetic", config=SyntheticConfig(users=args.users, items=max(100, args.users // 4),
                                                                     seed=args.seed))
    else:
        prepared = ml100k_repo(args.data_dir)
    with prepared as repo:
        scratch = workspace(repo)
        try:
            os.chdir(scratch)
            project = Repo(scratch)
            project.apply()
            decl = project.two_tower()
            protocol = protocol_p(positive_events(project.store, decl))
            epochs = QUICK["epochs"] if args.quick else {}
            print("training the encoders and the two-tower on the training events ...", flush=True)
            versions = train_encoders(project, decl, protocol.train_events, args.seed, True, epochs)
            decl = project.two_tower(decl.name)
            data = TrainingSet.build(project.store, decl, protocol.train_events, encoders=versions)
            cap = epochs.get("two_tower")
            model = data.fit(data.config(seed=args.seed, **({"epochs": cap} if cap else {})), gate=True)
            item_ids = np.asarray(model.item_ids_)
            qframe, targets, known = validation(project.store, protocol.cut, item_ids, data.features)
            scores = model.score(qframe)
            texts, queries = (synthetic_texts_and_queries if synthetic else item_texts_and_queries)(repo / "data")
        finally:
            os.chdir(cwd)
            shutil.rmtree(scratch, ignore_errors=True)

    pairs, known_rows = search_pairs(targets, known, item_ids, queries)
    item_texts = texts.reindex(item_ids).fillna("").tolist()

    root = Path(tempfile.mkdtemp(prefix="autofeat-text-"))
    try:
        version = save_text_version(root, default_encoder_dir(), {"text": {"columns": [], "separator": ". "}})
        encoder, _ = load_text_encoder(root, version.version)
        print(f"encoding {len(item_texts):,} item texts ...", flush=True)
        vectors = encoder.encode_texts(item_texts)
        import bm25s

        from feast_autofeat.recommend.search_eval import bm25_scores

        table = search_table(pairs, vectors, encoder.encode_texts, lambda q: bm25_scores(item_texts, q), scores,
                             known_rows, weights=tuple(args.weights), seed=args.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{table['test_interactions']:,} test searches of {table['test_users']} users, "
          f"{table['queries']} distinct queries, {table['candidates']} text candidates")
    print(f"{'row':<36}{'Recall@20':>12}{'NDCG@10':>12}   personalized minus this (Recall@20, NDCG@10)")
    for name, row in table["rows"].items():
        diff = row.get("personalized minus this")
        extra = (f"   {diff['recall@20']['mean']:+.4f} ± {diff['recall@20']['se']:.4f}, "
                 f"{diff['ndcg@10']['mean']:+.4f} ± {diff['ndcg@10']['se']:.4f}") if diff else ""
        print(f"{name:<36}{row['recall@20']['mean']:>12.4f}{row['ndcg@10']['mean']:>12.4f}{extra}")
    head = table["rows"][PERSONALIZED]
    wins = {name: all(row["personalized minus this"][m]["mean"] > 0 for m in ("recall@20", "ndcg@10"))
            for name, row in table["rows"].items() if name in ("BM25", "text embedding", "two-tower (no query)")}
    query = "the target's category and brand name" if synthetic else "the target's genres"
    result = {"dataset": args.dataset, "protocol": f"P split; query = {query}", "quick": args.quick,
              "users": args.users if synthetic else None,
              "seed": args.seed, "two_tower_epochs": model.metrics_.get("tuned_epochs"), **table,
              "target_personalized_beats_each_baseline": wins, "bm25s": bm25s.__version__,
              "personalized": head, "seconds": time.perf_counter() - t0}
    name = "synthetic" if synthetic else "ml100k"
    path = save(f"search_eval_quick_{name}" if args.quick else f"search_eval_{name}", result)
    print(f"\nbeats each baseline (both metrics): {wins}\nsaved {path}")


if __name__ == "__main__":
    main()
