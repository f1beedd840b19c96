"""The zoo of shipped sets: every set's recorded quick check still holds, ``zoo:NAME`` works
where a run folder does, and the package stays small."""
import json
import os
from pathlib import Path

import pytest

import datadistill
from datadistill.cli import main
from datadistill.data import DATASETS
from datadistill import zoo
from datadistill.zoo import catalogue, names

from .conftest import SHARED_DATA

NEEDS_FILES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision's folders
DATA_ROOT = Path(os.environ.get("DATADISTILL_TEST_DATA", SHARED_DATA))  # where they lie
MAX_TOTAL_BYTES = 4 * 1024 * 1024


def test_the_zoo_lists_its_sets_and_stays_small(capsys):
    sets = catalogue()
    assert sets, "no zoo sets shipped"
    assert sum(s.size_bytes for s in sets) < MAX_TOTAL_BYTES
    assert main(["zoo"]) == 0
    listed = capsys.readouterr().out
    assert all(f"zoo:{s.name}" in listed for s in sets)


@pytest.mark.parametrize("name", names())
def test_a_zoo_set_still_scores_what_its_card_records_and_is_not_written(name, capsys):
    card = next(s for s in catalogue() if s.name == name).card
    dataset = datadistill.load(f"zoo:{name}").meta["dataset"]["name"]
    assert dataset in DATASETS.names()
    if dataset in NEEDS_FILES and not (DATA_ROOT / NEEDS_FILES[dataset]).is_dir():
        pytest.skip(f"{dataset} is not in {DATA_ROOT} (set DATADISTILL_TEST_DATA)")
    check = card["check"]
    files = sorted(p.stat().st_mtime_ns for p in zoo.get(name).folder.rglob("*"))
    assert main(["evaluate", f"zoo:{name}", *check["args"], "--json",
                 "--data-root", str(DATA_ROOT)]) == 0
    accuracy = json.loads(capsys.readouterr().out)["after"]["accuracy_mean"]
    assert accuracy == pytest.approx(check["accuracy"], abs=check["tolerance"])
    assert sorted(p.stat().st_mtime_ns for p in zoo.get(name).folder.rglob("*")) == files


def test_zoo_names_work_as_run_folders(tmp_path, capsys):
    name = names()[0]
    assert main(["export", f"zoo:{name}", "--out", str(tmp_path / "set.safetensors")]) == 0
    assert (tmp_path / "set.safetensors").is_file()
    assert main(["report", f"zoo:{name}"]) == 0
    assert main(["evaluate", "zoo:nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no zoo set 'nope'" in err and name in err and "\n" not in err
