import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import Schedule, TrainConfig
from common.errors import PaperzooError, TrainingDiverged
from common.testing import REPO_ROOT
from common.tracking import client
from common.train import build_optimizer, build_scheduler, lr_multiplier, target_tokens, train
from papers._template.model import Classifier
from papers._template.task import RingsTask


def quick(**kw) -> TrainConfig:
    base = dict(
        max_steps=40, batch_size=32, lr=0.01, min_lr=0.001, warmup_steps=5, ckpt_every=10, log_every=5
    )
    return TrainConfig(**{**base, **kw})


class Recorder:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, metrics))


def test_loss_decreases_on_a_toy():
    torch.manual_seed(0)
    sink = Recorder()
    train(Classifier(hidden=32), RingsTask(test_size=200), quick(max_steps=100), tracker=sink, progress=False)
    losses = [m["train/loss"] for _, m in sink.rows if "train/loss" in m]
    assert losses[-1] < 0.5 * losses[0]
    assert all("tokens_per_s" in m and "lr" in m for _, m in sink.rows if "train/loss" in m)


def test_schedules():
    cfg = TrainConfig(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_multiplier(cfg, 0) == pytest.approx(0.1)
    assert lr_multiplier(cfg, 9) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 99) == pytest.approx(0.1)
    assert lr_multiplier(cfg, 54) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    noam = TrainConfig(schedule=Schedule.noam, noam_d_model=512, warmup_steps=4000, lr=1.0)
    assert lr_multiplier(noam, 3999) == pytest.approx(512**-0.5 * 4000**-0.5)
    assert lr_multiplier(noam, 99) == pytest.approx(512**-0.5 * 100 * 4000**-1.5)


class ExplodesAt(nn.Module):
    def __init__(self, step: int, hidden: int = 8):
        super().__init__()
        self.inner, self.calls, self.step = Classifier(hidden=hidden), 0, step

    def forward(self, batch):
        self.calls += 1
        loss = self.inner(batch)
        return loss * float("nan") if self.calls > self.step else loss

    def logits(self, x):
        return self.inner.logits(x)


def test_lr_scale_gives_a_parameter_a_multiple_of_the_scheduled_lr():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    for p in model[0].parameters():
        p._lr_scale = 0.1  # e.g. a pretrained encoder fine-tuned beside a model trained from scratch
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2, max_steps=10, weight_decay=0.1)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    expected = 1e-3 * lr_multiplier(cfg, 5)
    assert lr_of[id(model[1].weight)] == pytest.approx((expected, 0.1))
    assert lr_of[id(model[1].bias)] == pytest.approx((expected, 0.0))
    assert lr_of[id(model[0].weight)] == pytest.approx((0.1 * expected, 0.1))
    assert lr_of[id(model[0].bias)] == pytest.approx((0.1 * expected, 0.0))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "last.pt"
    with pytest.raises(TrainingDiverged, match="loss became nan at step 25.*last good checkpoint"):
        train(ExplodesAt(25), RingsTask(test_size=100), quick(), ckpt_path=ckpt, progress=False)
    state = load_checkpoint(ckpt)
    assert state["step"] == 20 and math.isfinite(state["loss"]) and not state["finished"]


def test_checkpoint_is_atomic_and_corruption_is_reported_not_overwritten(tmp_path):
    ckpt = tmp_path / "last.pt"
    train(Classifier(hidden=8), RingsTask(test_size=100), quick(max_steps=10), ckpt_path=ckpt, progress=False)
    assert load_checkpoint(ckpt)["finished"] and not list(tmp_path.glob("*.tmp"))
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(PaperzooError, match="corrupt or unreadable.*left untouched"):
        train(
            Classifier(hidden=8),
            RingsTask(),
            quick(max_steps=10),
            ckpt_path=ckpt,
            resume=True,
            progress=False,
        )
    assert ckpt.read_bytes() == b"not a checkpoint"
    save_checkpoint(ckpt, {"model": {}})
    with pytest.raises(PaperzooError, match="incomplete"):
        load_checkpoint(ckpt)


def test_resume_in_process_matches_uninterrupted(tmp_path):
    cfg = quick(max_steps=30)
    torch.manual_seed(0)
    full = train(
        Classifier(hidden=16), RingsTask(test_size=100), cfg, ckpt_path=tmp_path / "a.pt", progress=False
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "b.pt"
    with pytest.raises(TrainingDiverged):  # stop mid-run by diverging after step 17: checkpoint at 10
        train(ExplodesAt(17, hidden=16), RingsTask(test_size=100), cfg, ckpt_path=ckpt, progress=False)
    state = load_checkpoint(ckpt)
    state["model"] = {k.removeprefix("inner."): v for k, v in state["model"].items()}
    save_checkpoint(ckpt, state)
    torch.manual_seed(123)  # resume must not depend on the ambient RNG
    resumed = train(
        Classifier(hidden=16), RingsTask(test_size=100), cfg, ckpt_path=ckpt, resume=True, progress=False
    )
    assert resumed.resumed_from == 10
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)


def test_checkpoint_averaging_evaluates_the_mean_of_the_last_checkpoints(tmp_path):
    cfg = quick(max_steps=30, ckpt_every=5)
    torch.manual_seed(0)
    plain = Classifier(hidden=16)
    train(plain, RingsTask(test_size=100), cfg, ckpt_path=tmp_path / "plain" / "last.pt", progress=False)
    run_dir = tmp_path / "avg"
    run_dir.mkdir()
    save_checkpoint(run_dir / "weights-00000099.pt", {"stale": torch.zeros(1)})  # from an older run
    torch.manual_seed(0)
    averaged = Classifier(hidden=16)
    result = train(averaged, RingsTask(test_size=100), quick(max_steps=30, ckpt_every=5, average_last=3),
                   ckpt_path=run_dir / "last.pt", progress=False)  # fmt: skip
    kept = sorted(p.name for p in run_dir.glob("weights-*.pt"))
    assert kept == ["weights-00000020.pt", "weights-00000025.pt", "weights-00000030.pt"]
    snaps = [torch.load(run_dir / name, weights_only=True) for name in kept]
    for name, value in plain.state_dict().items():  # the same run: the last snapshot is the final weights
        torch.testing.assert_close(snaps[-1][name], value)
        mean = sum(s[name] for s in snaps) / 3
        torch.testing.assert_close(averaged.state_dict()[name], mean)
        assert not torch.allclose(mean, value)
    torch.testing.assert_close(load_checkpoint(run_dir / "last.pt")["model"]["net.0.weight"],
                               averaged.state_dict()["net.0.weight"])  # fmt: skip
    assert result.metrics == RingsTask(test_size=100).evaluate(averaged, torch.device("cpu"))
    with pytest.raises(PaperzooError, match="average_last"):
        train(Classifier(hidden=16), RingsTask(test_size=100), quick(average_last=2), progress=False)


def _final_loss(store, run_name="rings/mlp/s0"):
    mlflow_client = client(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow_client.get_experiment_by_name("_template")
    runs = mlflow_client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'")
    return runs


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_same_mlflow_run_with_the_same_loss(tmp_path):
    from common.testing import lab_env, reproduce_in, seed_store

    # killed at its first checkpoint (step 25 or so) with ~575 steps (over a second) still to go: the resumed run
    # trains those, the uninterrupted one all 600, most of them past the 20 warmup steps
    args = ["-m", "common.reproduce", "template", "scale=smoke", "train.max_steps=600", "train.ckpt_every=25",
            "only=[rings/mlp]", "progress=false"]  # fmt: skip
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**lab_env(killed), "OMP_NUM_THREADS": "1"}
    seed_store(killed)  # the store's schema migrations run here, once per session, not in the killed process
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env={**__import__("os").environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    ckpt = killed / "runs" / "_template" / "smoke" / "rings-mlp-s0" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = load_checkpoint(ckpt)["step"]
    assert 0 < step_at_kill < 600

    assert reproduce_in(killed, *args[2:], "resume=true") == 0
    assert reproduce_in(clean, *args[2:]) == 0  # uninterrupted

    runs_killed, runs_clean = _final_loss(killed), _final_loss(clean)
    assert len(runs_killed) == 1  # the resumed run is the same MLflow run, not a new one
    assert runs_killed[0].info.status == "FINISHED" and runs_killed[0].data.tags["resumed"] == "true"
    a = runs_killed[0].data.metrics["final/train_loss"]
    b = runs_clean[0].data.metrics["final/train_loss"]
    assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    from common.testing import lab_env, reproduce_in, run_cli, seed_store

    args = ["common.reproduce", "template", "scale=smoke", "train.max_steps=30", "only=[rings/mlp]",
            "progress=false", "train.batch_size=64"]  # fmt: skip
    assert reproduce_in(tmp_path / "one", *args[1:]) == 0
    seed_store(tmp_path / "two")  # rank 0 logs into it without first running the store's schema migrations
    ddp = run_cli("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", *args,
                  env=lab_env(tmp_path / "two"))  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = _final_loss(tmp_path / "one")[0].data.metrics["final/train_loss"]
    two = _final_loss(tmp_path / "two")
    assert len(two) == 1  # only rank 0 logs
    assert two[0].data.metrics["final/train_loss"] == pytest.approx(one, abs=1e-5)


def test_target_tokens_counts_what_the_loss_is_computed_on():
    from common.data.synthetic import SelectiveCopying
    from common.experiment import LazyTask
    from papers.transformer.data import PAD_ID, copy_task_batch
    from papers.transformer.task import CopyTask

    lm = {"idx": torch.zeros(4, 8, dtype=torch.long), "targets": torch.full((4, 8), -100)}
    lm["targets"][:, -3:] = 1  # e.g. selective copying: only the answer positions count
    assert target_tokens(lm) == 12
    assert target_tokens(RingsTask().batch("train", 0, 32, seed=0)) == 32  # one label per example
    copy = CopyTask()
    batch = copy_task_batch(0, 4, seed=0)
    assert copy.target_tokens(batch) == batch["tgt_out"].numel() == 4 * 11  # 10 symbols + EOS, no padding
    batch["tgt_out"][0, 5:] = PAD_ID
    assert copy.target_tokens(batch) == 44 - 6 == LazyTask(lambda: copy).target_tokens(batch)
    assert LazyTask(lambda: SelectiveCopying(n_ctx=32)).target_tokens(lm) == 12
    copying = SelectiveCopying(n_ctx=32, n_data=4).batch("train", 0, 2, seed=0)
    assert target_tokens(copying) == 2 * 4  # the data tokens to copy, not the whole sequence


def test_the_loop_counts_tokens_per_s_through_the_task():
    class Counting(RingsTask):
        seen = 0

        def target_tokens(self, batch):
            Counting.seen += 1
            return 1000

    train(Classifier(hidden=4), Counting(test_size=10), quick(max_steps=6, grad_accum=2), progress=False)
    assert Counting.seen == 12  # every micro-batch
