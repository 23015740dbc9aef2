"""One labelled image grid (rows of images, one column per prompt) for the benchmark figures."""

from __future__ import annotations

from pathlib import Path

import torch


def save_image_grid(rows: dict[str, torch.Tensor], prompts: list[str], title: str, path: Path) -> None:
    """`rows` maps a row label to images `(len(prompts), 3, H, W)` in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prompts)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n, 1.9 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                words = prompts[c].split()
                ax.set_title("\n".join(" ".join(words[i:i + 4]) for i in range(0, len(words), 4)), fontsize=5)
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
