"""Real-image baselines of the paper, arranged like distilled steps.

Each image baseline returns images (S, classes x ipc, C, H, W) and labels in the same
layout as distilled data, so the same evaluation and artifacts apply to them.
"""
from .images import IMAGE_BASELINES, average_real, herding, kmeans_centroids, random_real
from .knn import knn_accuracy
from .run import run_baseline

__all__ = ["IMAGE_BASELINES", "average_real", "herding", "kmeans_centroids", "knn_accuracy",
           "random_real", "run_baseline"]
