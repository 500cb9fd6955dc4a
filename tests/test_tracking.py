"""The tracking sinks against the real libraries: TensorBoard's event files, MLflow 3's sqlite store and
W&B's offline run files, read back with each library's own reader; and that no sink takes a run down."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, dllab_in_process, one_line_error

TINY = ["--profile", "smoke", "--set", "data.name=imagefolder"]


@pytest.fixture
def sink_homes(tmp_path, monkeypatch):
    """MLflow's default store is in the current folder and W&B keeps logs in its cache folder: both in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path


def tracked_run(tmp_path, sinks, every_steps=0):
    """A Run of lab1.mlp's config with ``sinks``, its sinks started as the runner starts them."""
    from dllab.core.config import make_config
    from dllab.core.registry import get_experiment
    from dllab.runner.run import Run

    exp = get_experiment("lab1.mlp")
    sets = [f"log.sinks=[{','.join(sinks)}]"] + ([f"log.every_steps={every_steps}"] if every_steps else [])
    cfg = make_config(exp.config_cls, exp.profiles, "smoke", sets)
    (tmp_path / "r").mkdir()
    return Run(tmp_path / "r", "lab1.mlp", cfg, quiet=True)


# --- TensorBoard --------------------------------------------------------------------------------------

def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_tensorboard_has_one_writer_per_variant_with_the_same_tags(tmp_path, imagefolder):
    from dllab.runner.experiment import run_experiment

    run = run_experiment("lab1.mlp", "smoke", ["data.name=imagefolder", f"data.root={imagefolder}",
                                               "train.epochs=2", "log.every_steps=1"],
                         out=str(tmp_path / "run"), quiet=True)
    history = run.history
    assert {r["variant"] for r in history} == {"sgd", "adam"} and len(history) == 4
    for variant in ("sgd", "adam"):
        ea = scalars(run.path / "tb" / variant)
        rows = [r for r in history if r["variant"] == variant]
        for col, tag in (("train_loss", "train/loss"), ("train_acc", "train/acc"), ("val_loss", "val/loss"),
                         ("val_acc", "val/acc"), ("lr", "train/lr")):
            events = ea.Scalars(tag)
            assert [e.step for e in events] == [r["epoch"] for r in rows]
            assert [e.value for e in events] == pytest.approx([r[col] for r in rows], rel=1e-6)
        steps = ea.Scalars("step/loss")   # every step (every_steps=1), numbered on across epochs
        assert len(steps) >= 2 and [e.step for e in steps] == list(range(1, len(steps) + 1))
    top = scalars(run.path / "tb")
    summary = run.metrics()["summary"]
    assert top.Scalars("summary/adam.test_acc")[0].value == pytest.approx(summary["adam.test_acc"], rel=1e-6)
    assert "curves" in top.Tags()["images"]
    hparams = top.PluginTagToContent("hparams")
    # torch's hparams "experiment" record is left out: TensorBoard takes the first one it finds in a logdir as
    # the only one, so a run of another experiment beside this one lost its columns
    assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" not in hparams
    from tensorboard.plugins.hparams import metadata
    start = metadata.parse_session_start_info_plugin_data(hparams["_hparams_/session_start_info"])
    assert start.hparams["experiment"].string_value == "lab1.mlp"
    assert start.hparams["adam.lr"].number_value == pytest.approx(run.cfg.adam.lr)


# --- W&B --------------------------------------------------------------------------------------------------

def wandb_records(run_folder):
    """The records of the run's offline .wandb file (a LevelDB-style log of protobuf records: 32 KiB blocks,
    each record with a 7-byte header), read with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    (file,) = run_folder.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, pending, records = file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:           # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):                    # a whole record, or the last part of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_rows(run_folder):
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in wandb_records(run_folder) if r.WhichOneof("record_type") == "history"]


def test_wandb_rows_carry_their_epoch_and_quiet_means_quiet(sink_homes, capfd, monkeypatch):
    from dllab.core import untrusted

    monkeypatch.setenv("WANDB_RUN_GROUP", "lab1.mlp/20260101-000000")   # what a sweep gives its points
    run = tracked_run(sink_homes, ["wandb"], every_steps=2)   # (opened on first use, closed by the summary)
    for step in (2, 4):
        run.log_step("adam", step, 0.5 + step)      # epoch 1 (nothing recorded yet)
    run.add_history([{"variant": "adam", "epoch": 1, "train_loss": 0.5, "val_acc": 0.75}], "adam")
    run.log_step("adam", 6, 0.25)                   # epoch 2
    run.add_history([{"variant": "adam", "epoch": 1, "train_loss": 0.5, "val_acc": 0.75},
                     {"variant": "adam", "epoch": 2, "train_loss": 0.25, "val_acc": 0.8}], "adam")
    run.write_metrics({"adam.test_acc": 0.8})
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower(), out + err     # --quiet: nothing from W&B itself
    rows = [r for r in wandb_rows(run.path) if "adam/step_loss" in r or "adam/train_loss" in r]
    assert [(r.get("step"), r["epoch"]) for r in rows] == [(2, 1), (4, 1), (None, 1), (6, 2), (None, 2)]
    assert rows[3]["adam/step_loss"] == 0.25 and rows[4]["adam/train_loss"] == 0.25
    (info,) = [r.run for r in wandb_records(run.path) if r.WhichOneof("record_type") == "run"]
    assert info.run_group == "lab1.mlp/20260101-000000" and info.project == "lab1.mlp"
    untrusted.check_tree(run.path)   # W&B's link to its core log is not left in the run folder


def test_a_sweep_gives_its_points_a_wandb_group(sink_homes):
    from dllab.core.config import RunConfig
    from dllab.tracking.tracker import SweepTracker

    cfg = RunConfig()
    cfg.log.sinks = ["tensorboard", "wandb"]
    with SweepTracker(sink_homes / "20260101-000000", "lab1.mlp", cfg, quiet=True) as env:
        assert env == {"WANDB_RUN_GROUP": "lab1.mlp/20260101-000000"}


# --- MLflow -------------------------------------------------------------------------------------------------

def mlflow_client(folder):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")   # MLflow 3's default store, in the run's folder


@pytest.mark.slow   # about 11 s: a lab1.mlp run, and MLflow making its sqlite store
def test_mlflow_gets_params_metrics_artifacts_and_the_models(sink_homes, imagefolder):
    import mlflow

    res = dllab_in_process("run", "lab1.mlp", *TINY, "--set", f"data.root={imagefolder}", "--set",
                           "log.sinks=[tensorboard,mlflow]", "--out", "r", "--quiet")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    mlflow.set_tracking_uri(f"sqlite:///{sink_homes / 'mlflow.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["lab1.mlp"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    (run,) = runs
    summary = json.loads((sink_homes / "r" / "metrics.json").read_text())["summary"]
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["seed"] == "0" and run.data.params["log.sinks"] == "['tensorboard', 'mlflow']"
    assert run.data.tags["dllab.experiment"] == "lab1.mlp" and run.data.tags["dllab.profile"] == "smoke"
    assert run.data.metrics["summary/adam.test_acc"] == pytest.approx(summary["adam.test_acc"])
    client = mlflow_client(sink_homes)
    epochs = client.get_metric_history(run.info.run_id, "adam/train_loss")
    assert [m.step for m in epochs] == [1]          # smoke: one epoch, at step = epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "report.html", "curves.png", "models"} <= artifacts
    # each variant's checkpoint for resume and its usable model folder (safetensors, model.json, MODEL.md)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "models")} == {
        "models/adam.pt", "models/sgd.pt", "models/adam", "models/sgd"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "models/adam")} == {
        "models/adam/model.safetensors", "models/adam/model.json", "models/adam/MODEL.md"}
    local = client.download_artifacts(run.info.run_id, "models/adam.pt", str(sink_homes / "dl"))
    assert open(local, "rb").read() == (sink_homes / "r" / "models" / "adam.pt").read_bytes()


def test_a_sweep_is_one_mlflow_parent_with_a_child_per_point(sink_homes, imagefolder, points_in_process):
    res = dllab_in_process("sweep", "lab1.mlp", *TINY, "--set", f"data.root={imagefolder}", "--set",
                           "log.sinks=[mlflow]", "--grid", "adam.lr=1e-3,3e-3", "--out", "sw", "--quiet")
    assert res.returncode == 0, res.stderr
    client = mlflow_client(sink_homes)
    (exp,) = [e for e in client.search_experiments() if e.name == "lab1.mlp"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["adam.lr"] for r in children) == ["0.001", "0.003"]
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"sweep.csv", "report.html"}


# --- a sink never takes a run down ---------------------------------------------------------------------

def broken_library(tmp_path, name):
    """A package ``name`` that is installed (found on the path first) but raises on import."""
    package = tmp_path / "broken" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('this install is broken')\n")
    return tmp_path / "broken"


@pytest.mark.slow   # a new process with a broken tensorboard first on its path (in-process: test_a_sweep_its_sinks_refuse...)
@pytest.mark.parametrize("on_error", ["warn", "fail"])   # warn: a whole run
def test_a_broken_tensorboard_install_warns_or_refuses(on_error, tmp_path, imagefolder):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_library(tmp_path, "tensorboard")),
                                                         str(REPO / "src")])}
    res = subprocess.run([sys.executable, "-m", "dllab", "run", "lab1.mlp", *TINY, "--set",
                          f"data.root={imagefolder}", "--set", f"log.on_sink_error={on_error}", "--out",
                          str(tmp_path / "r"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    if on_error == "fail":   # refused before any work: one line, exit 2, no folder
        one_line_error(res, "the tensorboard sink cannot start (RuntimeError: this install is broken)")
        assert not (tmp_path / "r").exists()
        return
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dllab: warning: the tensorboard sink cannot start "
                                                   "(RuntimeError: this install is broken)"), res.stderr
    assert (tmp_path / "r" / "metrics.json").exists() and (tmp_path / "r" / "report.html").exists()
    assert not (tmp_path / "r" / "tb").exists()
    assert "warning: the tensorboard sink cannot start" in (tmp_path / "r" / "log.txt").read_text()


def test_a_sink_that_fails_mid_run_is_switched_off_with_one_warning(tmp_path, capsys, monkeypatch):
    from dllab.tracking.tensorboard_sink import TensorBoardSink

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardSink, "epoch", full_disk)
    run = tracked_run(tmp_path, ["tensorboard"])
    with run.tracking():
        for epoch in (1, 2):
            run.add_history([{"variant": "adam", "epoch": e, "train_loss": 0.5} for e in range(1, epoch + 1)],
                            "adam")
        run.write_metrics({"adam.test_acc": 0.8})
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dllab: warning: the tensorboard sink failed while writing an epoch (OSError: [Errno 28] No "
                   "space left on device); switched off, the run goes on without it"]
    assert [r["epoch"] for r in run.records.history] == [1, 2] and (run.path / "metrics.json").exists()
    assert (run.path / "history.csv").read_text().count("\n") == 3


def test_a_sweep_its_sinks_refuse_leaves_no_folder(tmp_path, imagefolder, monkeypatch):
    """log.on_sink_error=fail: a sink whose sweep cannot open refuses the sweep before any point, in one line, and
    the folder made for it goes again (nothing left behind, as for any refused input)."""
    from dllab.tracking.mlflow_sink import MLflowSink

    def unreachable(*args, **kwargs):
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(MLflowSink, "open_sweep", classmethod(unreachable))
    res = dllab_in_process("sweep", "lab1.mlp", *TINY, "--set", f"data.root={imagefolder}", "--set",
                           "log.sinks=[mlflow]", "--set", "log.on_sink_error=fail", "--grid", "width=8,16",
                           "--out", tmp_path / "sweep", "--quiet")
    one_line_error(res, "the mlflow sink cannot start (ConnectionError: store unreachable)")
    assert not (tmp_path / "sweep").exists()
