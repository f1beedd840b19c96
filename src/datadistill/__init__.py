"""datadistill: dataset distillation (Wang, Zhu, Torralba, Efros, 2018) on PyTorch."""

from ._version import __version__  # noqa: F401

from .artifacts import Distilled, load  # noqa: E402
from .config import DistillConfig  # noqa: E402
from .data import Dataset, list_datasets, load_dataset  # noqa: E402
from .distill import distill  # noqa: E402
from .errors import DistillError  # noqa: E402
from .evaluate import evaluate, evaluate_converge  # noqa: E402
from .exchange import export_set, import_set  # noqa: E402
from .init_distributions import init_weights  # noqa: E402
from .models import build_model, list_models  # noqa: E402

__all__ = [
    "Distilled", "DistillConfig", "DistillError", "Dataset", "build_model", "distill", "evaluate",
    "evaluate_converge", "export_set", "import_set", "init_weights",
    "list_datasets", "list_models", "load", "load_dataset",
]
