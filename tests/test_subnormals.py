"""Subnormal floats flushed on every thread torch trains with (``mlflow_ddsp.subnormals``).

The fault: on Intel CPUs a trained DDSP-SVC model's step cost 4.5x its first
steps' (``bench/train_throughput.py``), from subnormal operands in the matmuls;
``torch.set_flush_denormal`` reaches only the calling thread, not torch's OpenMP
workers that already exist. Speed is the bench's to measure; these tests pin the
mechanism, the wiring into training, and that the loss does not change.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from mlflow_ddsp.subnormals import flushed_subnormals, subnormals_flushed

x86_linux = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="FTZ/DAZ (MXCSR) and libgomp's GOMP_parallel: Linux x86-64",
)


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (its own OpenMP pool and floating-point state); its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@x86_linux
def test_flushing_reaches_torchs_existing_worker_threads_and_is_restored_on_them():
    out = _python("""
        import torch
        from mlflow_ddsp.subnormals import flushed_subnormals, subnormals_flushed
        torch.set_num_threads(2)
        print(subnormals_flushed())            # torch's default; the probe also starts the worker
        torch.set_flush_denormal(True)
        print(subnormals_flushed())            # torch's own switch: this thread only, the worker still makes them
        torch.set_flush_denormal(False)
        with flushed_subnormals() as supported:
            print(supported, subnormals_flushed())
            try:
                with flushed_subnormals():
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                pass
            print(subnormals_flushed())        # an inner block restores the outer one's mode
        print(subnormals_flushed())            # and the outer one torch's default, on every thread
        one = torch.tensor([1e-30]) * 1e-10
        print(bool(one.item() != 0))           # this thread too
    """)
    assert out.split("\n") == ["False", "False", "True True", "True", "False", "True"]


def test_disabled_changes_nothing():
    before = subnormals_flushed()
    with flushed_subnormals(enabled=False) as supported:
        assert supported is False
        assert subnormals_flushed() == before


@x86_linux
def test_cpu_training_runs_with_subnormals_flushed_on_every_thread_and_restores_after(
    demo_data, embedded, tmp_path, model_name, monkeypatch
):
    from conftest import tiny_config
    from mlflow_ddsp.training.loop import TrainLoop
    from mlflow_ddsp.training.session import intra_op_threads, train

    seen = []
    run = TrainLoop.run

    def recording_run(self, *args, **kwargs):
        seen.append((torch.get_num_threads(), subnormals_flushed()))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(TrainLoop, "run", recording_run)
    config = tiny_config(demo_data, tmp_path / "c.yaml", model_name, max_steps=2, interval_val=2, num_threads=2)
    with intra_op_threads(2):
        torch.full((1 << 20,), 1.0).mul_(2)  # this process's second OpenMP worker exists before training starts
        assert not subnormals_flushed()
        result = train(config, tracking_uri=embedded.uri, progress=False)
        assert result.final_step == 2
        assert seen == [(2, True)]  # both threads of the training loop flush
        assert not subnormals_flushed()  # and the process is as it was


@x86_linux
def test_flushing_leaves_the_training_loss_and_gradients_unchanged(demo_data, tmp_path):
    """Steps of the tiny model from one seed, with and without flushing: the same losses and weights.

    The Performer's key projections are scaled up so that most of its key features
    sit on the exp floor (1.6e-38) and their products underflow, as in a trained
    model (with 8x, about 64% of them; the gradients then differ, by at most ~1e-29).
    """
    from conftest import tiny_config
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.loss import RandomScaleSpectralLoss
    from mlflow_ddsp.models import build_model_from_config
    from mlflow_ddsp.optimizer import build_optimizer
    from mlflow_ddsp.training.data import make_loaders

    cfg = load_config(tiny_config(demo_data, tmp_path / "c.yaml", "loss"))
    torch.manual_seed(0)
    batches = [b for _, b in zip(range(4), make_loaders(cfg)[0])]

    def steps(flush: bool):
        torch.manual_seed(0)
        model = build_model_from_config(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("to_k.weight"):
                    p.mul_(8.0)
        optimizer = build_optimizer(model.parameters(), cfg.train.lr, cfg.train.weight_decay, torch.device("cpu"))
        loss_fn = RandomScaleSpectralLoss(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale)
        losses, first_grads = [], None
        with flushed_subnormals(flush):
            for b in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(b["units"].float(), b["f0"], b["volume"], b["spk_id"], infer=False), b["audio"])
                loss.backward()
                if first_grads is None:
                    first_grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
                optimizer.step()
                losses.append(loss.item())
        return losses, first_grads, torch.cat([p.detach().flatten() for p in model.parameters()])

    plain_losses, plain_grads, plain_weights = steps(False)
    flushed_losses, flushed_grads, flushed_weights = steps(True)
    assert not torch.equal(flushed_grads, plain_grads)  # subnormals were in play: flushing changed bits
    torch.testing.assert_close(flushed_grads, plain_grads, rtol=1e-5, atol=1e-20)
    assert flushed_losses == pytest.approx(plain_losses, rel=1e-5)
    torch.testing.assert_close(flushed_weights, plain_weights, rtol=1e-5, atol=1e-7)


@x86_linux
def test_training_warns_when_only_its_own_thread_can_flush(demo_data, embedded, tmp_path, model_name, monkeypatch,
                                                          caplog):  # fmt: skip
    import mlflow_ddsp.subnormals as subnormals
    from conftest import tiny_config
    from mlflow_ddsp.training.session import intra_op_threads, train

    monkeypatch.setattr(subnormals, "_libgomp", lambda: None)  # as with no OpenMP runtime found in libtorch
    config = tiny_config(demo_data, tmp_path / "c.yaml", model_name, max_steps=1, interval_val=1, num_threads=2)
    with intra_op_threads(2), caplog.at_level("WARNING", logger="mlflow_ddsp.training.session"):
        torch.full((1 << 20,), 1.0).mul_(2)  # the second OpenMP worker exists: the flush cannot reach it
        assert train(config, tracking_uri=embedded.uri, progress=False).final_step == 1
    warnings = [r.getMessage() for r in caplog.records if "subnormal" in r.getMessage()]
    assert warnings == [
        "subnormal floats are flushed on this thread only, not on torch's other compute threads (no OpenMP "
        "runtime found in libtorch); on Intel CPUs training may slow as the model trains: set train.num_threads: 1"
    ]
    assert not subnormals_flushed()
