"""Text classification data: splits as (texts, labels), tokenised once, batched with dynamic padding.

Rotten Tomatoes is tiny (10,662 short sentences), so every split lives in memory as Python lists. Reading
the local jsonl files directly (rather than through ``datasets``) writes no Arrow cache anywhere; the HF hub
copy is loaded through ``datasets`` only when no local folder exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from dllab import DataError
from dllab.core import environ, untrusted
from dllab.data import class_quotas, data_root

SPLITS = ("train", "validation", "test")


@dataclass
class TextSplit:
    texts: list[str]
    labels: np.ndarray          # int64, 0..k-1

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "TextSplit":
        return TextSplit([self.texts[i] for i in idx], self.labels[np.asarray(idx, dtype=np.int64)])


LABELS = (0, 1)   # the text labs are binary (0 = negative, 1 = positive): the models get two outputs
CLASSES = ["negative", "positive"]   # LABELS' names, as saved text models and classifiers describe them


def _read_jsonl(path: Path) -> TextSplit:
    texts, labels = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text, label = row["text"], row["label"]
                except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
                    raise DataError(f"{path}:{n}: expected a JSON object with 'text' and 'label'") from e
                if not isinstance(text, str):
                    raise DataError(f"{path}:{n}: 'text' is {type(text).__name__}, expected a string")
                if isinstance(label, bool) or label not in LABELS:
                    raise DataError(f"{path}:{n}: label {label!r} is not 0 or 1 (the text labs are binary: "
                                    "0 = negative, 1 = positive)")
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text; the file is damaged or not a .jsonl file") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from e
    if not texts:
        raise DataError(f"{path}: no examples; every split needs at least one line "
                        '{"text": ..., "label": 0 or 1}')
    return TextSplit(texts, np.asarray(labels, dtype=np.int64))


def read_jsonl_splits(folder: Path) -> dict[str, TextSplit]:
    """``<folder>/{train,validation,test}.jsonl``, one ``{"text": str, "label": 0 or 1}`` per line."""
    return {split: _read_jsonl(folder / f"{split}.jsonl") for split in SPLITS}


def _load_from_hub(name: str) -> dict[str, TextSplit]:
    import datasets   # Hugging Face datasets (about a second of imports) only when a dataset is not on disk
    ds = datasets.load_dataset(name)
    return {s: TextSplit(list(ds[s]["text"]), np.asarray(ds[s]["label"], dtype=np.int64)) for s in SPLITS}


def local_folder(name: str, root: str = "") -> Path | None:
    """``<root>/<name>/`` when it holds all three ``.jsonl`` splits."""
    folder = data_root(root) / name
    return folder if all((folder / f"{s}.jsonl").is_file() for s in SPLITS) else None


def load_text_dataset(name: str = "rotten_tomatoes", root: str = "") -> dict[str, TextSplit]:
    """The three splits of ``name``: from ``<root>/<name>/*.jsonl`` if that folder exists, else the HF hub."""
    folder = local_folder(name, root)
    if folder is not None:
        return read_jsonl_splits(folder)
    folder = data_root(root) / name
    hint = f"pass --set data.root=<folder holding {name}/> or set $DLLAB_DATA"
    if not environ.hub_reachable():   # asks once, in seconds, instead of ~25 s of retries when offline
        raise DataError(f"dataset '{name}': no {folder}/{{train,validation,test}}.jsonl and the HF hub is "
                        f"unreachable; {hint}")
    try:
        return _load_from_hub(name)
    except Exception as e:  # unknown name, no `datasets`...: one clear line instead of a traceback
        raise DataError(f"dataset '{name}': no {folder}/{{train,validation,test}}.jsonl and the HF hub copy "
                        f"could not be loaded ({type(e).__name__}); {hint}") from e


def balanced_subset(split: TextSplit, limit: int, seed: int) -> TextSplit:
    """A class-balanced random subset of ``limit`` rows (all rows when ``limit`` is 0 or too big).

    The local files list all positives before all negatives, so a plain prefix would be one class only.
    """
    if limit <= 0 or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(split.labels == c) for c in np.unique(split.labels)]
    quota = dict(class_quotas([len(ix) for ix in per_class], limit))
    # Drawn class by class with numpy (not the image subsets' torch generator), rows kept in file order: the
    # text profiles' numbers were measured on exactly these rows.
    idx = np.concatenate([rng.choice(ix, quota[c], replace=False) for c, ix in enumerate(per_class)])
    return split.subset(np.sort(idx))


def load_text_splits(dcfg, seed: int) -> dict[str, TextSplit]:
    """The splits of ``dcfg.name`` (a text data config: name, root, train/val/test limits), subset as configured.
    ``text_source(dcfg)`` says where they came from."""
    splits = load_text_dataset(dcfg.name, dcfg.root)
    limits = {"train": dcfg.train_limit, "validation": dcfg.val_limit, "test": dcfg.test_limit}
    return {s: balanced_subset(splits[s], limits[s], seed) for s in splits}


def text_source(dcfg) -> str:
    """Where ``load_text_splits(dcfg, ...)`` reads from: the local folder, else the HF hub."""
    return f"{dcfg.name} from {local_folder(dcfg.name, dcfg.root) or 'the HF hub'}"


# --- tokenisation and batching ------------------------------------------------------------------------

@dataclass
class TokenizedSplit:
    input_ids: list[list[int]]   # unpadded, truncated to max_length
    labels: np.ndarray
    pad_id: int                  # the tokenizer's padding token

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def tokenize(split: TextSplit, tokenizer, max_length: int) -> TokenizedSplit:
    """Tokenise once, unpadded: padding happens per batch, to that batch's longest sentence."""
    enc = tokenizer(split.texts, truncation=True, max_length=max_length, padding=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedSplit(list(enc["input_ids"]), split.labels, int(pad_id))


def pad_batch(rows: list[list[int]], labels, pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding: right-pad to the longest row of this batch, with the matching attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor(np.asarray(labels), dtype=torch.long)}


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                           group: bool = True, mega: int = 50) -> list[np.ndarray]:
    """Batches of row indices. ``rng=None``: in order (evaluation). With ``group``, rows of similar length
    share a batch so dynamic padding pads little (HF's ``group_by_length``): when training, shuffle, sort
    within chunks of ``mega`` batches by length, and shuffle the batches; when evaluating, sort globally."""
    n = len(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable") if group else np.arange(n)
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    if group:
        chunk = batch_size * mega
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                                for c in (order[i:i + chunk] for i in range(0, n, chunk))])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if group:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iterate_batches(split: TokenizedSplit, batch_size: int, rng: np.random.Generator | None = None,
                    group_by_length: bool = True):
    """Yield ``(row_indices, batch)``; the indices put predictions of a length-sorted pass back in order."""
    for idx in length_grouped_batches(split.lengths, batch_size, rng, group_by_length):
        yield idx, pad_batch([split.input_ids[i] for i in idx], split.labels[idx], split.pad_id)


def num_batches(split: TokenizedSplit, batch_size: int) -> int:
    return (len(split) + batch_size - 1) // batch_size


# --- sentences a user names (prediction) -------------------------------------------------------------

TEXT_FILE_LIMIT = 64 * 2 ** 20


def read_sentences(inputs: Iterable[str | Path], files: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """``{"input": sentence}`` per sentence a user names (``dllab predict`` on a text model): each of ``inputs``
    that is a ``Path`` or names an existing file is a text file of sentences, one per line (blank lines skipped;
    a line's row also gets ``"source": "<file>:<line>"``), any other is a sentence itself; ``files`` are always
    files. A folder, a missing, non-UTF-8 or empty file, or no sentence at all is one line."""
    out: list[dict[str, Any]] = []
    for item in inputs:
        if isinstance(item, Path) or Path(item).is_file() or Path(item).is_dir():
            out += _sentence_lines(Path(item))
        elif str(item).strip():
            out.append({"input": str(item)})
    for f in files:
        out += _sentence_lines(Path(f))
    if not out:
        raise DataError("no sentences given: name sentences, or text files of them (one per line)")
    return out


def _sentence_lines(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise DataError(f"{path} is a folder; a text model takes sentences, or text files of them (one per line)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = untrusted.read_bytes(path, TEXT_FILE_LIMIT).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    rows = [{"input": line.strip(), "source": f"{path}:{i}"} for i, line in enumerate(text.splitlines(), 1)
            if line.strip()]
    if not rows:
        raise DataError(f"{path} holds no sentences (one per line)")
    return rows
