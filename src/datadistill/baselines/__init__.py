"""Real-image baselines of the paper, arranged like distilled steps.

Each image baseline picks images per class; ``baseline_images`` returns images
(S, classes x ipc, C, H, W) and labels in the same layout as distilled data, so the same
evaluation and artifacts apply to them.
"""
from ..selectors import IMAGE_BASELINES, baseline_images, class_layout, images_for, random_real
from .knn import knn_accuracy
from .run import run_baseline

__all__ = ["IMAGE_BASELINES", "baseline_images", "class_layout", "images_for", "knn_accuracy",
           "random_real", "run_baseline"]
