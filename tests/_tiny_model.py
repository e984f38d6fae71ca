"""A tiny random-weight open_clip model saved in ``local-dir:`` format (plumbing tests only, never results)."""
from __future__ import annotations

import json
from pathlib import Path

TINY_CFG = {
    "embed_dim": 24,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    """Write open_clip_config.json + random weights (safetensors) into ``folder``; returns it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


class TinyLinearEncoder:
    """A random linear image encoder in numpy with the kit's Encoder interface, for plumbing tests that start many
    processes (no torch import: fault injection). ``delay`` seconds of sleep per preprocessed image make runs long
    enough to interrupt."""

    def __init__(self, dim: int = 12, size: int = 16, seed: int = 0, delay: float = 0.0):
        import numpy as np

        self.device = "cpu"
        self.embed_dim, self.size, self.delay = dim, size, delay
        self.weight = np.random.default_rng(seed).standard_normal((3 * size * size, dim))
        self.model_id = f"tiny-linear-{dim}-seed{seed}"
        self.meta = {"model": self.model_id, "model_name": self.model_id, "activation": "n/a", "embed_dim": dim,
                     "image_size": [size, size], "preprocess": f"resize {size} bicubic, /255", "dtype": "float32",
                     "device": "cpu"}

    def preprocess(self, image):
        import time

        import numpy as np

        if self.delay:
            time.sleep(self.delay)
        arr = np.asarray(image.convert("RGB").resize((self.size, self.size)), dtype=np.float64) / 255.0
        return arr.transpose(2, 0, 1).copy()

    def encode_images(self, x, batch_size: int = 64):
        import numpy as np

        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        out = np.einsum("bi,id->bd", x, self.weight)  # row-local: a row's result never depends on its batch
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
