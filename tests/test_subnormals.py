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

import numpy as np
import pytest
import torch

from mlflow_ddsp.subnormals import flushed_subnormals, subnormals_flushed
from mlflow_ddsp.training.session import intra_op_threads

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


def _record_loop_threads(monkeypatch) -> list[tuple[int, bool]]:
    """(torch threads, flushing on every one) as each training loop starts: the list it fills."""
    from mlflow_ddsp.training.loop import TrainLoop

    seen = []
    run = TrainLoop.run

    def recording_run(self, *args, **kwargs):
        seen.append((torch.get_num_threads(), subnormals_flushed()))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(TrainLoop, "run", recording_run)
    return seen


@x86_linux
def test_cpu_training_runs_with_subnormals_flushed_on_every_thread_and_restores_after(
    demo_data, embedded, tmp_path, model_name, monkeypatch
):
    from conftest import tiny_config
    from mlflow_ddsp.training.session import intra_op_threads, train

    seen = _record_loop_threads(monkeypatch)
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


# ------------------------------------------------------- every compute thread, every path (issue 20 point 15)


def _small_converter():
    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.inference import VoiceConverter
    from mlflow_ddsp.models import build_model_from_config

    cfg = parse_config({"data": {"encoder": "logmel", "encoder_out_channels": 128}, "model": {"n_layers": 1},
                        "device": "cpu"})  # fmt: skip
    torch.manual_seed(0)
    return VoiceConverter(build_model_from_config(cfg), cfg)


def _in_thread(where: str, work):
    """Run ``work()`` on the main thread, a fresh thread, or a fresh thread whose own OpenMP team already exists."""
    import threading

    if where == "main":
        return work()
    out, errors = [], []

    def run():
        try:
            if where == "thread with a team":
                torch.full((1 << 20,), 1.0).mul_(2)  # libgomp gives each thread its own team: this one starts now
            out.append(work())
        except BaseException as e:  # noqa: BLE001  re-raised on the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, name=f"compute-{where}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


@x86_linux
@pytest.mark.parametrize("where", ["main", "fresh thread", "thread with a team"])
def test_every_stage_of_a_cpu_conversion_flushes_on_every_compute_thread_of_any_calling_thread(where, monkeypatch):
    """f0 (fcpe, rmvpe and crepe are torch networks), units and synthesis: each computes with subnormals flushed.

    The probe in each stage multiplies 1e-30 by 1e-10 on every thread of the
    calling thread's OpenMP team: 0 where the flush holds, 1e-40 where it does not.
    A serving request runs on a thread of the server's pool, not the main thread.
    """
    converter = _small_converter()
    seen: dict[str, bool] = {}

    def probing(stage, fn):
        def wrapper(*args, **kwargs):
            seen[stage] = subnormals_flushed()
            return fn(*args, **kwargs)

        return wrapper

    extractor = converter._f0(None)
    monkeypatch.setattr(extractor, "extract", probing("f0", extractor.extract))
    monkeypatch.setattr(converter.units_encoder, "encode", probing("units", converter.units_encoder.encode))
    monkeypatch.setattr(converter.model, "forward", probing("synthesis", converter.model.forward))
    audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(22050) / 44100).astype(np.float32)

    def convert():
        converter.convert(audio, 44100, seed=0)
        return subnormals_flushed()

    with intra_op_threads(2):
        torch.full((1 << 20,), 1.0).mul_(2)  # the main thread's second OpenMP worker exists before the conversion
        after = _in_thread(where, convert)
    assert seen == {"f0": True, "units": True, "synthesis": True}
    assert after is False  # and the calling thread's team is as it was


@x86_linux
def test_a_training_step_on_a_fresh_thread_flushes_on_every_compute_thread(demo_data, embedded, tmp_path, model_name,
                                                                           monkeypatch):  # fmt: skip
    from conftest import tiny_config
    from mlflow_ddsp.training.session import train

    seen = _record_loop_threads(monkeypatch)
    config = tiny_config(demo_data, tmp_path / "c.yaml", model_name, max_steps=1, interval_val=1, num_threads=2)

    def training():
        torch.full((1 << 20,), 1.0).mul_(2)
        return train(config, tracking_uri=embedded.uri, progress=False).final_step, subnormals_flushed()

    with intra_op_threads(2):
        assert _in_thread("thread with a team", training) == (1, False)
    assert seen == [(2, True)]


def _bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@x86_linux
@pytest.mark.parametrize("where", ["main", "thread with a team"])
def test_the_checkpoint_overhead_benchs_training_step_flushes_as_training_does(where, monkeypatch):
    bench = _bench("checkpoint_overhead")
    trainer = bench.Trainer.create(batch_size=1, seconds=0.1)
    seen = []
    forward = trainer.model.forward

    def recording(*args, **kwargs):
        seen.append(subnormals_flushed())
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", recording)
    with intra_op_threads(2):
        torch.full((1 << 20,), 1.0).mul_(2)
        _in_thread(where, trainer.step)
        assert not subnormals_flushed()
    assert seen == [True]


# ------------------------------------------------------- how torch's threads wait (the collapse of point 15)


def _spin_count(code: str, **env: str) -> str:
    """libgomp's GOMP_SPINCOUNT in a fresh interpreter running ``code`` (OMP_DISPLAY_ENV prints it when torch loads)."""
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env=environ)  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = [line.split("=", 1)[1].strip().strip("'") for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert counts, done.stderr
    return counts[0]


def test_passive_openmp_waits_keeps_a_users_choice_and_says_what_holds():
    from mlflow_ddsp.device import passive_openmp_waits

    for chosen in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(chosen)
        assert passive_openmp_waits(env) == ", ".join(f"{k}={v}" for k, v in chosen.items())
        assert env == chosen
    env = {}
    state = passive_openmp_waits(env)  # torch is loaded in this process: only later processes wait passively
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert state.startswith("torch's threads spin while they wait") and "OMP_WAIT_POLICY=PASSIVE" in state


@pytest.mark.slow
@pytest.mark.parametrize(
    "who, code",
    [
        ("the library and every CLI command", "import mlflow_ddsp, torch"),
        # `mlflow models serve`: MLflow's scoring server imports our loader module before any torch
        ("a served model", "import mlflow.pyfunc.scoring_server, importlib, sys; assert 'torch' not in sys.modules; "
                           "importlib.import_module('mlflow_ddsp.serving.pyfunc')"),  # fmt: skip
    ],
)
def test_processes_that_import_mlflow_ddsp_first_wait_passively(who, code):
    """libgomp's default spins 300,000 times at each barrier: on shared cores torch's 2 threads collapsed 5-30x."""
    assert _spin_count(code) == "0", who


@pytest.mark.slow
def test_a_users_wait_policy_is_kept_and_children_of_a_late_import_wait_passively():
    assert _spin_count("import mlflow_ddsp, torch", OMP_WAIT_POLICY="ACTIVE") == "30000000000"
    assert _spin_count("import mlflow_ddsp, torch", GOMP_SPINCOUNT="1000") == "1000"
    code = """
        import os, subprocess, sys
        import torch, mlflow_ddsp                 # torch first: this process keeps libgomp's default
        from mlflow_ddsp.device import openmp_waits
        print(openmp_waits().startswith("torch's threads spin"))
        child = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                               env={**os.environ, "OMP_DISPLAY_ENV": "VERBOSE"})
        print([line.split("=")[1].strip() for line in child.stderr.splitlines() if "GOMP_SPINCOUNT" in line])
    """
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env=environ)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True", "[\"'0'\"]"]


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["checkpoint_overhead", "f0_accuracy", "reflow_speed", "serve_latency", "soak",
                                   "train_throughput"])  # fmt: skip
def test_every_bench_waits_passively(bench):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / f"{bench}.py"
    assert _spin_count(f"import runpy, sys; sys.argv = [{str(script)!r}, '--help']\n"
                       f"try: runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit: pass") == "0"
