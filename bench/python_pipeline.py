"""The daemon's job done by a straightforward Python pipeline, for the
comparison in bench/daemon.sh: read each site's channel TIFFs with
tifffile, self-standardize each channel as the bundle's preprocessing
does ((x - mean) / (std + eps); the synthetic fields already have the
model's size, so no resize), run the predictor with onnxruntime in batches,
and write one AnnData per plate to Zarr. Prints one JSON line: sites/s over
the whole run (reading, inference and writing).

usage: python_pipeline.py BUNDLE SITES_LIST OUT_ZARR BATCH THREADS
"""

import json
import os
import shutil
import sys
import time

import anndata
import numpy as np
import onnxruntime as ort
import pandas as pd
import tifffile


def main():
    # Zarr v3, as the daemon writes.
    anndata.settings.zarr_write_format = 3
    bundle, sites_list, out, batch, threads = sys.argv[1:6]
    batch, threads = int(batch), int(threads)
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    eps = manifest["preprocess"]["normalization"]["eps"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        os.path.join(bundle, manifest["graphs"]["predictor"]), options, providers=["CPUExecutionProvider"]
    )
    sites = [line.split(";") for line in open(sites_list).read().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    rows = {}
    for i in range(0, len(sites), batch):
        chunk = sites[i : i + batch]
        images = np.stack(
            [np.stack([tifffile.imread(p).astype(np.float64) for p in paths]) for paths in chunk]
        )
        mean = images.mean(axis=(2, 3), keepdims=True)
        std = images.std(axis=(2, 3), keepdims=True)
        x = ((images - mean) / (std + eps)).astype(np.float32)
        (embedding,) = session.run(["embedding"], {"image": x})
        for paths, row in zip(chunk, embedding):
            plate = os.path.basename(os.path.dirname(paths[0]))
            rows.setdefault(plate, ([], []))
            rows[plate][0].append(os.path.basename(paths[0]))
            rows[plate][1].append(row)
    for plate, (names, x) in rows.items():
        a = anndata.AnnData(
            X=np.array(x, dtype=np.float32),
            obs=pd.DataFrame({"paths": names}, index=[f"{plate}/{n}" for n in names]),
        )
        a.write_zarr(os.path.join(out, plate))
    seconds = time.perf_counter() - start
    print(json.dumps({"bench": "python", "sites": len(sites), "batch": batch, "threads": threads,
                      "seconds": seconds, "sites_per_s": len(sites) / seconds}))


if __name__ == "__main__":
    main()
