"""The demo's summary: sites per plate in the daemon's stores, and a kNN
probe on the held-out plates with and without batch correction.

Each held-out site gets the majority label of its k nearest training-plate
sites (cosine similarity of the embeddings the daemon stored, same store,
so both sides had the same correction); ties go to the nearer neighbour.
Labels come from the screen's manifest. Reads the stores with anndata, as
a user would.

usage: demo-probe.py MANIFEST HELD_OUT_PLATES(comma-separated) \
           LABEL=STORE [LABEL=STORE ...] [--k 5]
"""

import argparse
import csv
import os
from collections import Counter

import anndata
import numpy as np


def site_labels(manifest):
    with open(manifest, newline="") as f:
        return {
            (r["plate"], r["well"], str(int(r["site"]))): r["label"]
            for r in csv.DictReader(f)
        }


def load(store):
    """Every plate group of `store`: {plate: (keys, X)}."""
    plates = {}
    for group in sorted(os.listdir(store)):
        path = os.path.join(store, group)
        if not os.path.isfile(os.path.join(path, "zarr.json")):
            continue
        a = anndata.read_zarr(path)
        plates[str(a.uns["plate"])] = (list(a.obs_names), np.asarray(a.X, dtype=np.float64))
    return plates


def knn_accuracy(train_x, train_y, test_x, test_y, k):
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sims = unit(test_x) @ unit(train_x).T
    correct = 0
    for row, truth in zip(sims, test_y):
        nearest = np.argsort(-row)[:k]
        votes = Counter(train_y[i] for i in nearest)
        best = max(votes.values())
        # A tie goes to the label of the nearest neighbour among the tied.
        label = next(train_y[i] for i in nearest if votes[train_y[i]] == best)
        correct += label == truth
    return correct / len(test_y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("held_out")
    ap.add_argument("stores", nargs="+", metavar="LABEL=STORE")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    labels = site_labels(args.manifest)
    held_out = set(args.held_out.split(","))
    first = True
    for spec in args.stores:
        name, store = spec.split("=", 1)
        plates = load(store)
        if first:
            print("    sites embedded per plate (%s):" % store)
            for plate, (keys, _) in plates.items():
                role = "held out" if plate in held_out else "training"
                print("      %-10s %5d  (%s)" % (plate, len(keys), role))
            classes = sorted(set(labels.values()))
            print(
                "    kNN probe (k=%d, cosine) on the held-out plates, reference: the training plates;"
                " %d classes, chance about %.3f:" % (args.k, len(classes), 1 / len(classes))
            )
            first = False
        train_x, train_y, test_x, test_y = [], [], [], []
        for plate, (keys, x) in plates.items():
            for key, row in zip(keys, x):
                p, well, site = key.split("/")[:3]
                y = labels[(p, well, site)]
                if plate in held_out:
                    test_x.append(row)
                    test_y.append(y)
                else:
                    train_x.append(row)
                    train_y.append(y)
        # Classes the training plates never show cannot be predicted.
        seen = set(train_y)
        kept = [i for i, y in enumerate(test_y) if y in seen]
        acc = knn_accuracy(
            np.array(train_x), train_y, np.array([test_x[i] for i in kept]), [test_y[i] for i in kept], args.k
        )
        print("      %-28s %.3f  (%d held-out sites)" % (name, acc, len(kept)))


if __name__ == "__main__":
    main()
