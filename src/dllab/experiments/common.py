"""What image experiments share: load the data into the run (where the pixels came from goes in env.json)."""
from __future__ import annotations

from ..config import DataConfig
from ..data.images import ImageData, load_images


def load_data(cfg, run, data_cfg: DataConfig | None = None, key: str = "data") -> ImageData:
    """Load ``cfg.data`` (or ``data_cfg``, the config section ``key``) and record where the pixels came from
    (and any fallback) in env.json + report; a resumed run refuses pixels from another source."""
    data_cfg = data_cfg or cfg.data
    data = load_images(data_cfg, seed=cfg.seed, profile=cfg.profile)
    run.check_source(key, data.source)
    for w in data.warnings:
        run.note(w)
    desc = describe_data(data)
    run.write_env(data=desc, data_fallback=bool(data.warnings))
    run.log(f"data: {desc}")
    return data


def describe_data(data: ImageData) -> str:
    """Where the pixels came from, which classes, and the split sizes, in one line (env.json, log)."""
    n_val = len(data.val) if data.val is not None else 0
    return (f"{data.source}; classes {data.classes if len(data.classes) <= 10 else len(data.classes)}; "
            f"train {len(data.train)} / val {n_val} / test {len(data.test)}")
