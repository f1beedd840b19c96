"""k-nearest-neighbour classification with a small reference set (scikit-learn)."""
from __future__ import annotations

from torch import Tensor


def knn_accuracy(reference: Tensor, reference_labels: Tensor, test: Tensor, test_labels: Tensor,
                 k: int, metric: str) -> float:
    """Test accuracy of k-NN on flattened images; ``metric`` is ``l1`` or ``l2``."""
    from sklearn.neighbors import KNeighborsClassifier

    p = {"l1": 1, "l2": 2}[metric]
    classifier = KNeighborsClassifier(n_neighbors=k, p=p)
    classifier.fit(reference.reshape(len(reference), -1).cpu().numpy(),
                   reference_labels.reshape(-1).cpu().numpy())
    predicted = classifier.predict(test.reshape(len(test), -1).cpu().numpy())
    return float((predicted == test_labels.cpu().numpy()).mean())
