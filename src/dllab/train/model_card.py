"""MODEL.md, the model card beside a saved model (``saved_model``; Lab 2's text models: ``text.saved``): made from its
model.json alone, so the card never says anything the description does not."""
from __future__ import annotations

import json
import re
from typing import Any

from dllab.core.untrusted import md_cell, printable

# The spec's number, when it has one, goes beside the model's (keys as in model.json's "metrics")
_METRIC_NAMES = {"test_acc": "test accuracy (saved weights)", "test_loss": "test loss (saved weights)",
                 "val_acc": "validation accuracy (best epoch)", "best_epoch": "epoch kept",
                 "epochs": "epochs trained", "test_acc_last": "test accuracy (last epoch)",
                 "test_loss_last": "test loss (last epoch)", "seconds": "training time (s)",
                 "trainable_params": "trainable parameters"}


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else md_cell(value)


def _classes(classes: list[str]) -> str:
    shown = ", ".join(md_cell(c) for c in classes[:20])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")


def model_card(desc: dict[str, Any]) -> str:
    """The card's Markdown for model.json's content ``desc``."""
    parts = [_header(desc), _data(desc), _metrics(desc), _limits(desc), _usage(desc), _config(desc)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _is_text(desc: dict[str, Any]) -> bool:
    """A model of sentences: a fine-tuned text model, or a classifier on sentence embeddings (lab1.transfer's
    classifiers are on image features)."""
    return desc.get("kind") == "text" or (desc.get("kind") == "features" and "max_length" in desc["input"])


def _header(desc: dict[str, Any]) -> str:
    run = desc["run"]
    return (f"# {md_cell(run['experiment'] or 'dllab')}: variant {md_cell(desc['variant'])}\n\n"
            + (f"{md_cell(run['description'])}\n\n" if run.get("description") else "")
            + f"- Model: {_model_line(desc)}\n"
            f"- Run: profile `{md_cell(run['profile'])}`, seed {md_cell(run['seed'])}")


def _model_line(desc: dict[str, Any]) -> str:
    kind = desc.get("kind")
    return (_text_model(desc) if kind == "text" else _features_model(desc) if kind == "features"
            else _registry_model(desc))


def _registry_model(desc: dict[str, Any]) -> str:
    spec = desc["model"]
    kwargs = ", ".join(f"{k}={md_cell(v)}" for k, v in spec["kwargs"].items())
    return f"`{md_cell(spec['name'])}({kwargs})`, weights in `{md_cell(desc['weights'])}` (safetensors)"


def _text_model(desc: dict[str, Any]) -> str:
    m = desc["model"]
    base = f"`{md_cell(m['base']['name'])}` ({md_cell(m['base']['source'])})"
    how = (f"LoRA adapters and the trained head on the frozen {base}, in `{md_cell(desc['weights'])}` (a PEFT "
           "adapter: the base model is loaded from where it was trained from)" if m.get("adapter") else
           f"`{md_cell(m['architecture'])}` fine-tuned from {base}, in `{md_cell(desc['weights'])}` (Hugging Face "
           "layout)")
    return f"{how}; strategy `{md_cell(m['strategy'])}`, evaluated in {md_cell(m['precision'])}; tokenizer included"


def _features_model(desc: dict[str, Any]) -> str:
    m = desc["model"]
    emb = m["embedding"]
    k = f" (k={md_cell(m['k'])})" if m.get("k") else ""
    if emb.get("kind") == "image":
        return (f"scikit-learn `{md_cell(m['estimator'])}`{k} on the standardised features of the {md_cell(emb['name'])}"
                f" saved with it in `{md_cell(emb['folder'])}/` (extracted in {md_cell(emb['precision'])}), fitted "
                f"arrays in `{md_cell(desc['weights'])}` (safetensors, no pickle)")
    return (f"scikit-learn `{md_cell(m['estimator'])}`{k} on standardised {md_cell(emb['pooling'])}-pooled "
            f"embeddings of `{md_cell(emb['name'])}` ({md_cell(emb['source'])}), fitted arrays in "
            f"`{md_cell(desc['weights'])}` (safetensors, no pickle)")


def _data(desc: dict[str, Any]) -> str:
    inp = desc["input"]
    data, norm = inp.get("data") or {}, inp.get("normalisation") or {}
    lines = ["## Data"]
    if data and _is_text(desc):
        lines.append(f"- Dataset: {md_cell(data.get('name'))} ({md_cell(data.get('source'))}): "
                     f"{data.get('train_sentences')} training, {data.get('validation_sentences')} validation and "
                     f"{data.get('test_sentences')} test sentences")
    elif data:
        lines.append(f"- Dataset: {md_cell(data.get('title') or data.get('name'))} ({md_cell(data.get('source'))}): "
                     f"{data.get('train_images')} training, {data.get('val_images')} validation and "
                     f"{data.get('test_images')} test images")
    lines.append(f"- Classes ({len(inp['classes'])}): {_classes(inp['classes'])}")
    if "channels" in inp:
        lines.append(f"- Input: {inp['channels']}×{inp['height']}×{inp['width']} images with values in [0, 1]; "
                     + (f"normalised inside the model with the {md_cell(norm['stats'])} mean {norm.get('mean')} and "
                        f"std {norm.get('std')}" if norm.get("stats") else "no normalisation"))
    if "max_length" in inp:
        whose = "the embedding model's tokenizer" if desc.get("kind") == "features" else \
            "the tokenizer saved beside the model"
        lines.append(f"- Input: sentences, tokenised by {whose} and truncated at {inp['max_length']} tokens")
    return "\n".join(lines)


def _metrics(desc: dict[str, Any]) -> str:
    metrics, reference = desc["metrics"], desc.get("reference") or {}
    spec = {k: _number(reference[k]) if k in reference else "—" for k in metrics}
    rows = [f"| {_METRIC_NAMES.get(k, md_cell(k))} | {_number(v)} | {spec[k]} |" for k, v in metrics.items()]
    return ("## Metrics\n\n" + f"{desc.get('metrics_rule', '')}.\n\n| metric | this model | spec |\n|---|---|---|\n"
            + "\n".join(rows))


def _limits(desc: dict[str, Any]) -> str:
    inp, run, metrics = desc["input"], desc["run"], desc["metrics"]
    data = inp.get("data") or {}
    title = md_cell(data.get("title") or data.get("name") or "its dataset")
    what, other, like = (("sentences", "sentence (another topic, another language, gibberish)",
                          "sentences like its test set (short English movie-review snippets)") if _is_text(desc) else
                         ("images", "image (another dataset, noise)",
                          "images like its test set (same source, size and preprocessing)"))
    count = data.get("train_sentences" if _is_text(desc) else "train_images", "?")
    how = (f"trained {metrics['epochs']} epoch{'s' if metrics['epochs'] != 1 else ''}" if "epochs" in metrics
           else "fitted")
    trained = (f"{how} on {count} {title} {what} of {len(inp['classes'])} classes "
               f"(profile `{md_cell(run['profile'])}`)")
    return ("## Intended use and limits\n\n"
            f"- A course-lab model, {trained}: for studying and reproducing the lab, not for decisions that matter.\n"
            f"- It knows only these {len(inp['classes'])} classes: any other {other} still gets "
            "one of them, often with a high probability; it does not say \"none of these\".\n"
            f"- Expect the accuracy above only on {like}.")


def _usage(desc: dict[str, Any]) -> str:
    variant = md_cell(desc["variant"])
    inputs = "\"a sentence to classify\" sentences.txt" if _is_text(desc) else "image.png more/images/"
    return ("## Use\n\n```\ndllab predict RUN_FOLDER --variant " + variant + f" {inputs}\n```\n\n"
            "```python\nimport dllab\nmodel, spec = dllab.load_model(\"RUN_FOLDER\", variant=\"" + variant + "\")\n```")


def _config(desc: dict[str, Any]) -> str:
    if not desc.get("config"):
        return ""
    # JSON for the values: lists, null and booleans read as they do in config.yaml
    lines = [f"{printable(k)}: {printable(json.dumps(v))}" for k, v in (desc.get("config") or {}).items()]
    # a fence longer than any run of backticks inside, so that a value cannot end the block (CommonMark)
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", "\n".join(lines))), default=0))
    return f"## Config\n\n{fence}yaml\n" + "\n".join(lines) + f"\n{fence}"
