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
