"""Out-of-domain guard: how far a slide's tissue lies from the data a detector was trained on.

Each tissue patch the detector sees gives a feature vector: the detector encoder's last
stage averaged over space (what the network "sees"), plus the mean and standard deviation
of each normalised input channel (the stain colour). The training domain is described by a
Gaussian over those vectors (standardised per dimension) whose covariance is a
probabilistic PCA (Tipping & Bishop 1999): the top ``k`` principal directions plus an
isotropic residual. A patch's distance is its Mahalanobis distance under that Gaussian
(the feature-space OOD score of Lee et al. 2018, with one class); the slide's distance is
the median over its patches that are mostly tissue. A slide is out of domain when that
distance exceeds the description's threshold, calibrated on held-out synthetic slides and
real H&E (``manage.py describe_domain``).

The features come from hooks on the detector's own forward pass (``domain_probe``), so
measuring costs a spatial mean per patch. This module is NumPy only: the registry checks
descriptions in web processes, which never load torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .tissue import TissueMask

METHOD = "mahalanobis-ppca"
DEFAULT_LAYER = "stages.2"  # CenterNet's last encoder stage (stride 32)
MIN_PATCH_TISSUE = 0.5
COMPONENTS = 32

IN_DOMAIN, OUT_OF_DOMAIN, UNKNOWN = "in_domain", "out_of_domain", "unknown"


@dataclass(frozen=True)
class DomainDescription:
    """A detector's training domain: standardisation, PPCA Gaussian and threshold."""

    layer: str
    center: NDArray[np.float64]
    scale: NDArray[np.float64]
    components: NDArray[np.float64]  # (k, D), orthonormal rows
    variances: NDArray[np.float64]  # (k,)
    residual_variance: float
    threshold: float | None = None
    min_patch_tissue: float = MIN_PATCH_TISSUE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainDescription:
        """Build from the JSON stored in a model card / ModelVersion.domain."""
        if data.get("method") != METHOD:
            raise ValueError(f"unknown domain description method {data.get('method')!r}")
        return cls(
            layer=data["layer"],
            center=np.asarray(data["center"], np.float64),
            scale=np.asarray(data["scale"], np.float64),
            components=np.asarray(data["components"], np.float64),
            variances=np.asarray(data["variances"], np.float64),
            residual_variance=float(data["residual_variance"]),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            min_patch_tissue=float(data.get("min_patch_tissue", MIN_PATCH_TISSUE)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (6 significant digits)."""

        def rounded(values: NDArray) -> list:
            return np.vectorize(lambda v: float(f"{v:.6g}"))(values).tolist()

        return {
            "method": METHOD,
            "layer": self.layer,
            "features": f"spatial mean of {self.layer} output, then mean and std of each "
            "normalised input channel; standardised",
            "min_patch_tissue": self.min_patch_tissue,
            "statistic": "median over patches",
            "threshold": self.threshold,
            "center": rounded(self.center),
            "scale": rounded(self.scale),
            "components": rounded(self.components),
            "variances": rounded(self.variances),
            "residual_variance": float(f"{self.residual_variance:.6g}"),
        }

    def distances(self, features: NDArray) -> NDArray[np.float64]:
        """Mahalanobis distance of each row of ``features`` ``(N, D)`` from the domain."""
        z = (np.asarray(features, np.float64) - self.center) / self.scale
        projected = z @ self.components.T
        inside = (projected**2 / self.variances).sum(1)
        residual = np.maximum((z**2).sum(1) - (projected**2).sum(1), 0.0)
        return np.sqrt(inside + residual / self.residual_variance)

    def slide_distance(self, features: NDArray) -> float:
        """The slide's distance: the median of its patches' distances."""
        return float(np.median(self.distances(features)))


def fit_description(
    features: NDArray, layer: str = DEFAULT_LAYER, components: int = COMPONENTS
) -> DomainDescription:
    """Fit the PPCA Gaussian to training-patch ``features`` ``(N, D)`` (no threshold yet)."""
    features = np.asarray(features, np.float64)
    if len(features) <= components:
        raise ValueError(f"need more than {components} patches, got {len(features)}")
    center = features.mean(0)
    scale = features.std(0)
    scale[scale < 1e-6] = 1e-6
    z = (features - center) / scale
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    eigen = singular**2 / (len(z) - 1)
    k = min(components, len(eigen) - 1)
    residual = float(eigen[k:].mean()) if len(eigen) > k else float(eigen[-1])
    return DomainDescription(layer, center, scale, vt[:k], eigen[:k], max(residual, 1e-6))


def tissue_patches(
    origins: NDArray, patch_l0: tuple[float, float], tissue: TissueMask, min_tissue: float
) -> NDArray[np.bool_]:
    """Which patches are mostly tissue (all of them when none is)."""
    if len(origins) == 0:
        return np.zeros(0, bool)
    fraction = tissue.fraction(origins[:, 0], origins[:, 1], patch_l0[0], patch_l0[1])
    mostly = fraction >= min_tissue
    return mostly if mostly.any() else np.ones(len(origins), bool)


def measure(
    description: DomainDescription | None, features: NDArray, reason: str = ""
) -> dict[str, Any]:
    """The run's domain record: ``status`` (in_domain, out_of_domain or unknown), the
    slide's ``distance``, the ``threshold`` and the number of ``patches`` measured."""
    if description is None or description.threshold is None or len(features) == 0:
        why = reason or (
            "no tissue patch was measured"
            if description is not None and description.threshold is not None
            else "the detector has no description of its training data"
        )
        return {"status": UNKNOWN, "distance": None, "threshold": None, "reason": why}
    distance = description.slide_distance(features)
    status = OUT_OF_DOMAIN if distance > description.threshold else IN_DOMAIN
    return {
        "status": status,
        "distance": round(distance, 3),
        "threshold": round(description.threshold, 3),
        "patches": len(features),
        "method": METHOD,
    }
