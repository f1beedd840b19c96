"""The public API is pinned: changing it is a deliberate act."""
import datadistill


def test_public_api():
    assert sorted(datadistill.__all__) == sorted([
        "Distilled", "DistillConfig", "DistillError", "Dataset", "build_model", "distill",
        "evaluate", "evaluate_converge", "export_set", "import_set", "init_weights", "list_datasets", "list_models", "load", "load_dataset"])
    for name in datadistill.__all__:
        assert hasattr(datadistill, name)
