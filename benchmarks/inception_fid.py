"""True FID (Inception-v3 pool features, torchmetrics) of image sets against one fixed real set.

The Inception weights come from a local file only: torch-fidelity's FeatureExtractorInceptionV3
downloads them from GitHub when no path is given and `torch.load`s the path when one is (so the
file must be trusted: it is unpickled). The file is torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, the TensorFlow FID Inception converted to PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import torch


class InceptionFID:
    """FID of image batches against `real`, whose features are extracted once.

    Args:
        weights (`Path`): the Inception-v3 state dict (see the module docstring).
        real (`torch.Tensor`): `(N, 3, H, W)` real images in [0, 1]; resized to 299 by the metric.
        device (`torch.device`): where Inception runs.
        feature (`int`): the Inception layer whose pooled features are compared: 2048 (standard FID),
            or 64, 192, 768 (cheaper: the 2048-dim eigendecomposition in `compute` took 20-40 s on
            this 2-core CPU).
        batch (`int`): images per Inception call.
    """

    def __init__(self, weights: Path, real: torch.Tensor, device: torch.device, feature: int = 2048, batch: int = 128):
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ModuleNotFoundError as exc:
            raise ImportError("true FID needs torchmetrics and torch-fidelity: pip install -e '.[bench]'") from exc
        self.batch, self.device = batch, device
        # reset_real_features=False: reset() between image sets keeps the real statistics.
        self.metric = FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=str(weights), normalize=True,
                                               reset_real_features=False).to(device)
        self._update(real, real=True)

    @torch.no_grad()
    def _update(self, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), self.batch):
            self.metric.update(images[start:start + self.batch].to(self.device), real=real)

    def __call__(self, images: torch.Tensor) -> float:
        """FID of `images` (`(M, 3, H, W)` in [0, 1], M >= 2) against the real set."""
        self.metric.reset()
        self._update(images, real=False)
        return float(self.metric.compute())
