"""A synthetic PatternCom built on the real PatternNet file names (random features, a test-only model)."""
import csv
from collections import defaultdict

import numpy as np

from rscir_kit.features import ImageFeatures, TextFeatures

# attribute -> {class_dir: [values]} ; includes every merged class of the protocol
SPEC = {
    "color": {"airplane": ["white", "purple"], "tennis_court": ["green", "red", "blue"]},
    "context": {"bridge": ["over water", "over road"], "overpass": ["over road", "over railway"]},
    "density": {"dense_residential": ["dense"], "sparse_residential": ["sparse"], "forest": ["dense", "sparse"]},
    "existence": {"ferry_terminal": ["with boats"], "harbor": ["with boats", "without boats"],
                  "parking_space": ["with cars"], "parking_lot": ["with cars", "without cars"]},
    "quantity": {"storage_tank": ["one", "two", "many"]},
    "shape": {"closed_road": ["straight"], "intersection": ["cross", "round"], "swimming_pool": ["oval", "rectangular"]},
}

def make_synthetic_patterncom(patternnet_filelist, root):
    """Archive: 12 real file names per class of the real list (all 38 classes); CSVs from SPEC."""
    rng = np.random.default_rng(0)
    rows = list(csv.reader(open(patternnet_filelist)))[1:]
    by_class = defaultdict(list)
    for class_dir, name in rows:
        by_class[class_dir].append(name)
    paths, labels = [], []
    for class_dir in sorted(by_class):
        for name in by_class[class_dir][:12]:
            paths.append(f"{class_dir}/{name}")
            labels.append(class_dir)
    d = 24
    centers = {c: rng.standard_normal(d) for c in by_class}
    feats = np.stack([centers[l] + 0.9 * rng.standard_normal(d) for l in labels]).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    meta = {"model": "synthetic-test-model", "model_name": "synthetic-test-model"}
    archive = ImageFeatures(feats, paths, labels, meta)

    root.mkdir(parents=True, exist_ok=True)
    texts = set()
    for attribute, classes in SPEC.items():
        with open(root / f"{attribute}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            for class_dir, values in classes.items():
                for i, name in enumerate(by_class[class_dir][:10]):  # 10 of the 12 archive images are rows
                    value = values[i % len(values)]
                    texts.add(value)
                    w.writerow([name, attribute, value])
    texts = sorted(texts)
    tfeats = rng.standard_normal((len(texts), d)).astype(np.float32)
    tfeats /= np.linalg.norm(tfeats, axis=1, keepdims=True)
    return archive, TextFeatures(texts, tfeats, meta), root


