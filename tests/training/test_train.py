"""The training loop on the digits set with tiny nets: run files, result reporting, kill -9 + resume
bit-identity, the config a resume may and may not change, corrupt checkpoints, NaN stops, the norm
probe, DDP with 2 gloo ranks (one seed and several), the multi-seed CLI."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from procres.cli import build_parser, main
from procres.training.config import config_from_args, TrainConfig
import procres.training.run as run_module
import procres.training.loop as train_module
from procres.training.checkpoint import load_checkpoint
from procres.errors import UserError
from procres.models.registry import create_model
from procres.training.loop import _result, train

HISTORY_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "epoch_time", "images_per_sec", "norms", "block_kinds"}
TINY = dict(recipe="demo", epochs=2, batch_size=32, max_steps_per_epoch=4, init_norm_batches=1, record_every=2,
            threads=1)


def _tiny(tmp_path, name="run", **changes) -> TrainConfig:
    values = {**TINY, "model": "resnet8", "out": str(tmp_path / name), **changes}
    return TrainConfig.from_recipe(values.pop("recipe"), **values)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    config = _tiny(tmp, model="procresnet13", checkpoint_every_steps=3)
    return config, train(config, quiet=True)


def _pickled_globals(blob: bytes) -> set[str]:
    """``module.name`` of every class or function a pickle refers to (GLOBAL / STACK_GLOBAL)."""
    import pickletools

    found, strings = set(), []
    for op, arg, _ in pickletools.genops(blob):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_run_files_name_no_procres_module_so_any_layout_reads_them(finished_run):
    # checkpoints refer to torch's and Python's own classes only (weights_only=True reads them); no
    # pickled procres class or function, so moving modules never breaks a checkpoint written before
    import zipfile

    run = Path(finished_run[0].out)
    for name in ("checkpoint.pt", "model.pt"):
        with zipfile.ZipFile(run / name) as archive:
            found = set().union(*(_pickled_globals(archive.read(n)) for n in archive.namelist() if n.endswith(".pkl")))
        assert found and all(g.split(".")[0] in ("torch", "collections", "builtins") for g in found), (name, found)


def test_run_folder_history_and_result(finished_run):
    config, result = finished_run
    run = Path(config.out)
    assert {"config.json", "history.jsonl", "checkpoint.pt", "model.pt", "train.log", "result.json"} <= {
        p.name for p in run.iterdir()}
    assert TrainConfig.from_json((run / "config.json").read_text()) == config.resolved()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for h in history:
        assert HISTORY_KEYS <= set(h)
        kinds = h["block_kinds"]
        assert "transition" in kinds and len(h["norms"]["ratio"]) == len(kinds)
    assert history[0]["train_loss"] is None and history[0]["norms"]["steps_recorded"] == 1
    assert history[2]["norms"]["steps_recorded"] == 2  # record_every=2 over 4 steps
    assert history[2]["step"] == 8 and history[2]["lr"] == config.lr
    assert 0 <= history[2]["train_acc"] <= 1 and history[2]["images_per_sec"] > 0
    assert result["final_test_error"] == pytest.approx(1 - history[2]["test_acc"])
    assert json.loads((run / "result.json").read_text())["final_test_error"] == result["final_test_error"]
    _assert_identical(_weights(run / "model.pt"), result["model"].state_dict())
    assert "final test error" in (run / "train.log").read_text()
    assert "CUDA graphs off" in (run / "train.log").read_text()  # CPU: graphs never


def test_result_uses_best_validation_epoch_never_best_test():
    def rec(epoch, val_acc, test_acc):
        return {"epoch": epoch, "val_acc": val_acc, "test_acc": test_acc}

    # epoch 0 (initialisation) is never selected; best test (epoch 1) is not the best validation (epoch 2)
    history = [rec(0, 0.99, 0.1), rec(1, 0.5, 0.9), rec(2, 0.8, 0.6), rec(3, 0.8, 0.7), rec(4, 0.7, 0.65)]
    result = _result(history, "r")
    assert result["best_val_epoch"] == 2  # ties go to the earlier epoch
    assert result["test_error_at_best_val"] == pytest.approx(0.4)
    assert result["final_test_error"] == pytest.approx(0.35)
    no_val = _result([{"epoch": e, "val_acc": None, "test_acc": 0.5} for e in range(3)], "r")
    assert no_val["best_val_epoch"] is None and no_val["test_error_at_best_val"] is None


def test_norm_probe_measures_every_unit_and_leaves_the_model_as_it_was():
    from procres.training.data import load_dataset

    data = load_dataset("digits")
    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=False)
    config = TrainConfig(compile=True, init_norm_batches=2, batch_size=16, channels_last=False)
    run = SimpleNamespace(recorder=None, model=model, data=data, cfg=config, device=torch.device("cpu"), amp=amp,
                          rank=0, world=1)
    norms = train_module._epoch_norms(run)
    assert norms["steps_recorded"] == 2 and len(norms["ratio"]) == len(model.block_kinds)
    _assert_identical(model.state_dict(), before)  # BN running statistics restored
    assert all(p.grad is None for p in model.parameters())
    run.cfg = config.replace(compile=False)
    assert train_module._epoch_norms(run) == {}


def test_norm_probe_of_a_rank_copies_only_its_images_in_per_rank_batches(monkeypatch):
    import procres.training.data
    from procres.training.data import load_dataset
    from procres.diagnostics.recorder import NormRecorder
    from procres.training.evaluate import probe_norms

    data = load_dataset("digits")
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=16).double()
    config = TrainConfig(init_norm_batches=2, batch_size=16, channels_last=False)
    built = []

    class Spy(procres.training.data.DeviceLoader):
        def __init__(self, x, y, **kwargs):
            built.append((len(x), kwargs["batch_size"]))
            super().__init__(x, y, **kwargs)

        def _normalise(self, xb):  # float64 batches for the float64 model
            return super()._normalise(xb).double()

    monkeypatch.setattr(procres.training.data, "DeviceLoader", Spy)
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=False)
    norms = probe_norms(model, data, config, torch.device("cpu"), amp, rank=1, world=2)
    assert built == [(32, 8)]  # 2 global batches of 16 images, 8 per rank: not the training set
    # reference: rank 1's share of the first 32 images (1, 3, ..., 31), two batches of 8
    x = (data.train_x[:32].double() / 255 - data.mean[0]) / data.std[0]
    y = data.train_y[:32].long()
    with NormRecorder(model.blocks) as recorder:
        for batch in (slice(1, 16, 2), slice(17, 32, 2)):
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        expected = recorder.summary()
    assert norms["steps_recorded"] == 2
    # the loader normalises in float32 before the cast: agreement to float32 rounding; rank 0's
    # images (0, 2, ...) or the global batches give ratios more than 1e-3 (relative) away
    assert norms["ratio"] == pytest.approx(expected["ratio"], rel=1e-6, nan_ok=True)


def test_existing_run_needs_resume(finished_run, tmp_path):
    config, result = finished_run
    with pytest.raises(ValueError, match="--resume"):
        train(config, quiet=True)
    again = train(config.replace(resume=True), quiet=True)  # already finished: nothing left to train
    assert again["final_test_error"] == result["final_test_error"]


def test_corrupt_checkpoint_gives_clear_error_and_keeps_previous(finished_run, tmp_path):
    config, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(config.out, run)
    prev = (run / "checkpoint.prev.pt").read_bytes()
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"(?s)checkpoint.pt is unreadable.*checkpoint.prev.pt is kept") as err:
        train(config.replace(out=str(run), resume=True), quiet=True)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert (run / "checkpoint.prev.pt").read_bytes() == prev
    assert load_checkpoint(run.parent / "nothing-here") is None


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    def nan_on_third_training_forward(*args, **kwargs):
        model = create_model(*args, **kwargs)
        calls = []

        def hook(module, inputs, out):
            if module.training and torch.is_grad_enabled():
                calls.append(1)
                return out * float("nan") if len(calls) == 3 else out

        model.head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(run_module, "create_model", nan_on_third_training_forward)
    # checkpoint_minutes tiny: the time-based mid-epoch checkpoint fires after every step
    config = _tiny(tmp_path, init_norm_batches=0, checkpoint_minutes=1e-9)
    with pytest.raises(FloatingPointError, match="non-finite loss in epoch 1, step 3"):
        train(config, quiet=True)
    assert load_checkpoint(config.out)["step"] == 2
    assert "non-finite loss" in (Path(config.out) / "train.log").read_text()


def test_non_finite_weights_met_in_the_step_stop_naming_epoch_and_step(tmp_path, monkeypatch):
    import procres.constraints.hooks

    class Hook:  # the projection hook's contract: FloatingPointError naming the layer, raised in step()
        def __init__(self, model, optimizer, **kwargs):
            self.model, self.steps = model, 0
            optimizer.register_step_post_hook(self.after_step)

        def after_step(self, optimizer, args, kwargs):
            self.steps += 1
            if self.steps == 3:
                with torch.no_grad():
                    self.model.stem.weight.fill_(float("inf"))
                raise FloatingPointError("layer stem has non-finite weights")

        def state_dict(self):
            return {"steps": self.steps}

    monkeypatch.setattr(procres.constraints.hooks, "attach_procrustes", Hook)
    config = _tiny(tmp_path, model="procresnet13", init_norm_batches=0, checkpoint_every_steps=1)
    with pytest.raises(FloatingPointError, match=r"^in epoch 1, step 3: layer stem has non-finite weights; training"):
        train(config, quiet=True)
    checkpoint = load_checkpoint(config.out)
    assert checkpoint["step"] == 2 and torch.isfinite(checkpoint["model"]["stem.weight"]).all()
    assert "epoch 1, step 3: layer stem" in (Path(config.out) / "train.log").read_text()


@pytest.mark.parametrize("entry, cause", [("blocks.0.bn1.running_var", "batch-norm running statistic"),
                                          ("blocks.0.conv1.weight", "an update overflowed the weights")])
def test_non_finite_weights_name_the_first_bad_tensor_and_its_cause(tmp_path, monkeypatch, entry, cause):
    real = run_module._sgd

    def poisoned_after_second_step(model, cfg, **kwargs):
        optimizer, calls = real(model, cfg, **kwargs), []

        def after_step(opt, args, kwargs):
            calls.append(1)
            if len(calls) == 2:
                with torch.no_grad():
                    model.state_dict()[entry].fill_(float("inf"))

        optimizer.register_step_post_hook(after_step)
        return optimizer

    monkeypatch.setattr(run_module, "_sgd", poisoned_after_second_step)
    config = _tiny(tmp_path, init_norm_batches=0, checkpoint_every_steps=1)
    with pytest.raises(FloatingPointError, match=rf"non-finite weights in epoch 1, step 2: {entry}, with a finite loss, so .*{cause}"):
        train(config, quiet=True)
    assert load_checkpoint(config.out)["step"] == 1


def test_diverging_run_stops_and_its_checkpoint_is_finite(tmp_path):
    config = _tiny(tmp_path, lr=1e6, epochs=3, max_steps_per_epoch=10, checkpoint_every_steps=1)
    with pytest.raises(FloatingPointError, match=r"non-finite (loss|weights) in epoch \d+, step \d+") as info:
        train(config, quiet=True)
    bad_step = int(re.search(r"step (\d+)", str(info.value)).group(1))
    checkpoint = load_checkpoint(config.out)
    assert checkpoint["step"] < bad_step
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------- kill -9 and resume
KILL_ARGV = ["train", "--model", "procresnet13", "--recipe", "demo", "--epochs", "2", "--batch-size", "32",
             "--max-steps-per-epoch", "8", "--checkpoint-every-steps", "2", "--init-norm-batches", "1",
             "--record-every", "3", "--threads", "1", "--quiet"]


def _start(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "procres", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_after_checkpoints(proc, run: Path, count: int, timeout=120.0):
    """SIGKILL ``proc`` once checkpoint.pt has been replaced ``count`` times (polled by inode)."""
    seen, last, t0 = 0, None, time.monotonic()
    while seen < count:
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout
        try:
            inode = os.stat(run / "checkpoint.pt").st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != last:
            seen, last = seen + 1, inode
        time.sleep(0.002)
    proc.kill()
    assert proc.wait() == -9
    assert not (run / "model.pt").exists()  # really killed mid-run


def test_sigkill_and_resume_give_bit_identical_weights(tmp_path):
    run = tmp_path / "killed"
    proc = _start([*KILL_ARGV, "--out", str(run)])
    _kill_after_checkpoints(proc, run, 1)  # in epoch 1
    proc = _start([*KILL_ARGV, "--out", str(run), "--resume"])
    _kill_after_checkpoints(proc, run, 5)  # the old file + 4 new ones: in epoch 2
    assert subprocess.run([sys.executable, "-m", "procres", *KILL_ARGV, "--out", str(run), "--resume"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True).returncode == 0

    reference = config_from_args(build_parser().parse_args([*KILL_ARGV, "--out", str(tmp_path / "straight")]))
    train(reference, quiet=True)
    _assert_identical(_weights(run / "model.pt"), _weights(tmp_path / "straight" / "model.pt"))
    killed = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in killed] == [0, 1, 2]
    assert [h["train_loss"] for h in killed] == [h["train_loss"] for h in straight]
    assert [h["test_acc"] for h in killed] == [h["test_acc"] for h in straight]
    assert [h["norms"] for h in killed] == [h["norms"] for h in straight]  # the recorder's window survives


# ---------------------------------------------------------------- DDP
def _spawn_ranks(code_and_args, folder, world=2, timeout=120):
    """Run ``python -c CODE ARGS...`` in ``folder`` once per rank with torchrun's environment and
    assert that every rank exits 0; a rank still running after ``timeout`` seconds (a hang) is
    killed and fails the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", *code_and_args], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, cwd=folder))
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


DDP_WORKER = textwrap.dedent("""
    import json, os, sys, torch
    from procres.training.config import TrainConfig
    from procres.diagnostics.recorder import NormRecorder
    from procres.training.loop import train
    summary, local = NormRecorder.summary, []

    def spy(self, *, reduce=False):  # also keep this rank's own window
        local.append(summary(self))
        return summary(self, reduce=reduce)

    NormRecorder.summary = spy
    result = train(TrainConfig.from_json(open(sys.argv[1]).read()), quiet=True)
    torch.save({"model": result["model"].state_dict()}, f"rank{os.environ['RANK']}.pt")
    json.dump(local, open(f"norms-rank{os.environ['RANK']}.json", "w"))
""")


def test_ddp_two_gloo_ranks_agree_and_follow_the_single_process_curve(tmp_path):
    config = _tiny(tmp_path, name="ddp", epochs=3, batch_size=64, max_steps_per_epoch=6, record_every=2,
                   init_norm_batches=1, checkpoint_every_steps=4)
    (tmp_path / "config.json").write_text(config.to_json())
    _spawn_ranks([DDP_WORKER, str(tmp_path / "config.json")], tmp_path)
    _assert_identical(_weights(tmp_path / "rank0.pt"), _weights(tmp_path / "rank1.pt"))
    _assert_identical(_weights(tmp_path / "rank0.pt"), _weights(tmp_path / "ddp" / "model.pt"))
    _assert_norms_are_the_mean_over_ranks(tmp_path)

    single = train(config.replace(out=str(tmp_path / "single")), quiet=True)["history"]
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in ddp] == [0, 1, 2, 3]
    # same global batch and steps; BN batch statistics (per rank of 32 vs 64) and augmentation draws
    # differ, so the curves are close, not equal
    for d, s in zip(ddp[1:], single[1:]):
        assert abs(d["train_loss"] - s["train_loss"]) < 0.05 * s["train_loss"], (d["train_loss"], s["train_loss"])
    assert ddp[-1]["train_loss"] < ddp[1]["train_loss"]
    # evaluation is sharded and all-reduced: it counts each test image once (270 digits)
    assert ddp[0]["test_acc"] == pytest.approx(single[0]["test_acc"])  # same initial weights
    assert round(ddp[0]["test_acc"] * 270, 6) == int(round(ddp[0]["test_acc"] * 270))


def _assert_norms_are_the_mean_over_ranks(tmp_path):
    """Each epoch's history norms (written by rank 0) average both ranks' windows, which differ:
    every rank measured its own shard, at epoch 0 (the probe) as during training."""
    history = [json.loads(line) for line in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    ranks = [json.loads((tmp_path / f"norms-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(history) == 4  # epoch 0's probe, then epochs 1..3
    for record, mine, other in zip(history, *ranks):
        assert mine["ratio"] != pytest.approx(other["ratio"], rel=1e-3, nan_ok=True)
        weights = mine["steps_recorded"], other["steps_recorded"]
        for key in ("ratio", "grad_in", "fwd_out"):
            expected = [(a * weights[0] + b * weights[1]) / sum(weights) for a, b in zip(mine[key], other[key])]
            assert record["norms"][key] == pytest.approx(expected, rel=1e-9, nan_ok=True), (record["epoch"], key)


SEEDS_WORKER = textwrap.dedent("""
    import os, sys
    import procres.training.loop
    from procres.cli import main
    write = procres.training.loop.atomic_write_text

    def spy(path, text):  # who writes the summary
        if path.name == "summary.json":
            open(f"summary-written-by-rank{os.environ['RANK']}", "w").close()
        write(path, text)

    procres.training.loop.atomic_write_text = spy
    sys.exit(main(sys.argv[1:]))
""")


def test_ddp_with_several_seeds_runs_every_seed_and_rank_0_writes_the_summary(tmp_path):
    argv = ["train", "--model", "resnet8", "--recipe", "demo", "--epochs", "1", "--batch-size", "32",
            "--max-steps-per-epoch", "2", "--init-norm-batches", "0", "--record-every", "0", "--threads", "1",
            "--quiet", "--out", str(tmp_path / "runs"), "--seeds", "0", "1"]
    _spawn_ranks([SEEDS_WORKER, *argv], tmp_path)
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["final_test_error"]["values"]) == 2
    for seed in (0, 1):
        assert (tmp_path / "runs" / f"seed{seed}" / "model.pt").is_file()
        assert "2 rank(s)" in (tmp_path / "runs" / f"seed{seed}" / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.glob("summary-written-by-*")) == ["summary-written-by-rank0"]


# ---------------------------------------------------------------- CLI
def test_cli_seeds_summarise_mean_and_std(tmp_path, capsys):
    argv = ["train", "--model", "resnet8", "--recipe", "demo", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--init-norm-batches", "0", "--threads", "1", "--quiet", "--out", str(tmp_path), "--seeds", "0", "1"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    values = [json.loads((tmp_path / f"seed{s}" / "result.json").read_text())["final_test_error"] for s in (0, 1)]
    assert summary["final_test_error"]["values"] == values
    assert summary["final_test_error"]["mean"] == pytest.approx(sum(values) / 2)
    assert summary["final_test_error"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "+-" in capsys.readouterr().out
    # resuming every seed with a longer run: the other settings come from each seed's run
    assert main(["train", "--out", str(tmp_path), "--seeds", "0", "1", "--resume", "--epochs", "2", "--quiet"]) == 0
    for seed in (0, 1):
        result = json.loads((tmp_path / f"seed{seed}" / "result.json").read_text())
        assert result["epochs"] == 2 and TrainConfig.from_json((tmp_path / f"seed{seed}" / "config.json").read_text()
                                                               ).seed == seed


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.gpu
def test_cuda_run_bf16_channels_last_projection_and_mid_epoch_resume(tmp_path):
    pytest.importorskip("sklearn")  # the digits set
    config = _tiny(tmp_path, model="procresnet13", device="cuda", max_steps_per_epoch=5, checkpoint_every_steps=3)
    result = train(config, quiet=True)
    resolved = TrainConfig.from_json((Path(config.out) / "config.json").read_text())
    assert resolved.amp and resolved.channels_last and not resolved.deterministic
    assert [h["step"] for h in result["history"]] == [0, 5, 10]
    final = _weights(Path(config.out) / "model.pt")
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    # resume a copy from its previous checkpoint, saved mid-epoch 2 (step 9)
    run = tmp_path / "copy"
    shutil.copytree(config.out, run)
    (run / "model.pt").unlink()
    os.replace(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    assert load_checkpoint(run)["step"] == 9
    again = train(config.replace(out=str(run), resume=True), quiet=True)
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    resumed = _weights(run / "model.pt")
    for k in final:  # one replayed step on a non-deterministic cuDNN: close, not equal
        assert torch.allclose(final[k].float(), resumed[k].float(), rtol=1e-2, atol=1e-2), k


@pytest.mark.gpu
def test_cuda_run_with_graphs_records_norms_eagerly_and_falls_back(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")  # the digits set
    config = _tiny(tmp_path, model="procresnet13", device="cuda")  # graphs by default; 4 steps/epoch, record_every=2
    graphs = train(config, quiet=True)
    log = (Path(config.out) / "train.log").read_text()
    assert "CUDA graphs on" in log and "capture failed" not in log and graphs["cuda_graphs"]["ok"]
    assert [h["norms"]["steps_recorded"] for h in graphs["history"]] == [1, 2, 2]  # steps 0, 2 | 4, 6
    assert all(len(h["norms"]["ratio"]) == len(h["block_kinds"]) for h in graphs["history"])
    eager = train(config.replace(out=str(tmp_path / "eager"), cuda_graphs=False), quiet=True)
    assert "CUDA graphs off" in (tmp_path / "eager" / "train.log").read_text()
    for g, e in zip(graphs["history"][1:], eager["history"][1:]):  # same data and seeds; bf16, atomics
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=0.03), (g["train_loss"], e["train_loss"])

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(run_module, "capture_step", broken)
    with pytest.warns(RuntimeWarning, match="capture failed, training eagerly"):
        fallback = train(config.replace(out=str(tmp_path / "fallback")), quiet=True)
    assert "CUDA graphs off" in (tmp_path / "fallback" / "train.log").read_text()
    assert fallback["history"][-1]["step"] == 8


class _Interrupted(Exception):
    pass


def test_resume_mid_epoch_keeps_the_norm_window(finished_run, tmp_path, monkeypatch):
    # finished_run records steps 0, 2, 4, 6 (record_every=2) and checkpoints at steps 3 and 6; stop it
    # right after the mid-epoch checkpoint at step 3 and resume: epoch 1's norms hold both recorded
    # steps, 0 and 2, although the resumed part (step 3) records none
    reference, result = finished_run
    config = reference.replace(out=str(tmp_path / "stopped"))
    real_save = train_module.save_checkpoint

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        if state["partial"] is not None:
            raise _Interrupted

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        train(config, quiet=True)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = train(config.replace(resume=True), quiet=True)
    assert [h["norms"] for h in resumed["history"]] == [h["norms"] for h in result["history"]]
    assert resumed["history"][1]["norms"]["steps_recorded"] == 2
    _assert_identical(_weights(tmp_path / "stopped" / "model.pt"), _weights(Path(reference.out) / "model.pt"))


def test_cli_out_path_that_cannot_be_a_folder_is_a_sentence_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["train", "--recipe", "demo", "--out", str(blocker / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("procres train: error:") and str(blocker) in err


def test_resume_refuses_changed_settings_and_never_rewrites_config_json(tmp_path):
    config = _tiny(tmp_path, epochs=1)
    train(config, quiet=True)
    config_json = (Path(config.out) / "config.json").read_text()
    changed = config.replace(resume=True, batch_size=16, lr=0.7, seed=5, weight_decay=0.0, projection_p=0.0)
    with pytest.raises(UserError, match=r"batch_size 32 -> 16, lr 0\.05 -> 0\.7, weight_decay 0\.0005 -> 0\.0, "
                                        r"projection_p 0\.5 -> 0\.0, seed 0 -> 5 differ from the run's config"):
        train(changed, quiet=True)
    assert (Path(config.out) / "config.json").read_text() == config_json
    assert load_checkpoint(config.out)["epoch"] == 1  # nothing trained

    result = train(config.replace(resume=True, epochs=2, threads=2, checkpoint_every_steps=3), quiet=True)
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2]
    assert (Path(config.out) / "config.json").read_text() == config_json
    history = [json.loads(line) for line in (Path(config.out) / "history.jsonl").read_text().splitlines()]
    assert "config_changes" not in history[1]
    assert history[2]["config_changes"] == {"epochs": [1, 2], "threads": [1, 2], "checkpoint_every_steps": [0, 3]}
    assert "changed at this resume (config.json keeps the run's first settings): epochs 1 -> 2" in (
        Path(config.out) / "train.log").read_text()
    with pytest.raises(UserError, match="epochs 1 is fewer than the 2 epochs the run has already trained"):
        train(config.replace(resume=True), quiet=True)


def test_a_change_made_mid_epoch_reaches_that_epochs_record(finished_run, tmp_path, monkeypatch):
    reference, _ = finished_run  # 4 steps per epoch
    config = reference.replace(out=str(tmp_path / "run"), checkpoint_every_steps=1)
    real_save = train_module.save_checkpoint
    stops = [5, 6]  # mid-epoch 2, twice

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        if stops and state["step"] == stops[0]:
            stops.pop(0)
            raise _Interrupted

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        train(config, quiet=True)
    with pytest.raises(_Interrupted):  # a change, then a mid-epoch checkpoint that must carry it
        train(config.replace(resume=True, eval_batch_size=100), quiet=True)
    result = train(config.replace(resume=True, eval_batch_size=100, epochs=3), quiet=True)
    changes = [h.get("config_changes") for h in result["history"]]
    assert changes == [None, None, {"eval_batch_size": [1024, 100], "epochs": [2, 3]}, None]


def test_cli_resume_takes_the_runs_settings_and_refuses_a_changed_flag(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--recipe", "demo", "--epochs", "1", "--max-steps-per-epoch", "2",
                 "--init-norm-batches", "0", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    # the model, recipe, steps and threads come from the run; the default lr would be refused
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[2]["step"] == 4
    assert main(["train", "--out", str(run), "--resume", "--seed", "5", "--quiet"]) == 1
    assert "seed 0 -> 5 differ from the run's config" in capsys.readouterr().err


def test_resume_on_a_folder_without_a_checkpoint_says_it_starts_a_new_run(tmp_path):
    config = _tiny(tmp_path / "fresh", resume=True, epochs=1)
    train(config, quiet=True)
    log = (Path(config.out) / "train.log").read_text()
    assert "holds no checkpoint yet, so this is a new run" in log.splitlines()[0]
