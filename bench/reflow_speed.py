"""DDSP-SVC 6.0 (RectifiedFlow) on the CPU: ours against upstream DDSP-SVC's own code, side by side.

Two measurements, each side in its own process, taking turns under a
coordinator (ours, upstream, upstream, ours, ...: ABBA order, so machine load
and drift hit both alike):

1. **Training steps/s** of upstream's ``configs/reflow.yaml`` model at its default
   sizes (CombSubSuperFast DDSP stage with ``use_pitch_aug``, NaiveV2Diff velocity
   net 6 x 512, 768-dim units, 128 mels, ``t_start`` 0.7, ``lambda_ddsp`` 1, AdamW
   lr 2e-4, weight decay 0), on one synthetic batch stream that both sides
   generate alike (default **batch 2 x 2 s crops**, upstream trains 48 x 2 s on a
   GPU; ``--batch`` / ``--crop``). A step is ``zero_grad``, forward (DDSP stage,
   mel of its audio, rectified-flow loss), ``lambda_ddsp * ddsp_loss +
   reflow_loss``, backward and the optimizer step (upstream also its StepLR
   step, as ``train_reflow.py`` builds it); building the batch and taking the
   target's mel (upstream precomputes both) are outside the timing. Ours:
   :class:`mlflow_ddsp.models.reflow_svc.ReflowUnit2Wav` with
   :class:`mlflow_ddsp.vocoder.Vocoder`'s mel, the fused AdamW of
   :func:`mlflow_ddsp.optimizer.build_optimizer`, under the CPU settings ``mlflow-ddsp
   train`` uses (:func:`mlflow_ddsp.training.session.training_cpu_settings`: torch's
   threads unless ``train.num_threads``, subnormals flushed). Upstream:
   ``reflow.vocoder.Unit2Wav`` with ``reflow.vocoder.Vocoder`` (its mel is
   ``nsf_hifigan.nvSTFT.STFT.get_mel``) and ``torch.optim.AdamW``, as it ships
   (torch's threads, no flushing). Both start from the same weights (one
   state_dict, loaded strictly by both) and reseed torch with ``seed + step``
   before each step, so they draw the same t, noise and DDSP noise: their losses
   should track each other (printed: first, a few in between, last).

2. **Conversion** of a 10 s synthetic sung clip at model level (``--clip``): DDSP
   stage + 20 Euler reflow steps from ``t_start`` 0.7 + NSF-HiFiGAN vocoder
   (random weights at openvpi's 44.1 kHz default config, written to a temp folder
   as ``config.json`` + ``{'generator': state_dict}``, loaded by each side's own
   vocoder class). Ours: ``model(units, f0, volume, vocoder=voc, infer=True,
   return_wav=True, infer_step=20, method='euler', t_start=0.7)`` under
   ``torch.inference_mode()`` and flushed subnormals (as our converter runs);
   upstream: its ``Unit2Wav`` the same way under ``torch.no_grad()`` (as its
   ``main_reflow.py``; ``use_tqdm=False``). The same weights (the training init
   with the zero-initialised velocity output layer given small seeded weights, so
   the flow moves the mel), the same random units ``[1, T, 768]``, f0 and volume,
   ``torch.manual_seed(seed)`` before each call. A 1 s conversion warms each side
   up (and makes upstream load its vocoder, which it does lazily) before the timed
   10 s ones. Printed: seconds per clip, real-time factor, ours/upstream, and the
   max abs difference of the two sides' audio.

Getting upstream's code (nothing is downloaded by the bench)::

    mkdir -p /tmp/DDSP-SVC
    git -C /work/.mirror/yxlllc+DDSP-SVC/repo archive master | tar -x -C /tmp/DDSP-SVC
    # or: git clone https://github.com/yxlllc/DDSP-SVC /tmp/DDSP-SVC
    #     git -C /tmp/DDSP-SVC checkout 88f157c03dfea4855e9b7101897bac174fd9b53d

The checkout is imported in place (nothing is written into it). Modules it
imports at top level but that neither measurement uses, and that do not import
here, are stubbed by the bench itself: torchaudio (does not import beside torch
2.13; ``transforms.Resample`` is only used for resampling), pyworld, torchcrepe,
transformers, fairseq, gin, sklearn, parselmouth, resampy, local_attention.

Run (about 3 minutes on an idle 2-core CPU, longer on a busy one)::

    python bench/reflow_speed.py --upstream /tmp/DDSP-SVC
    python bench/reflow_speed.py --upstream /tmp/DDSP-SVC --steps 60 --batch 4 --conversions 4   # longer
    python bench/reflow_speed.py --upstream /tmp/DDSP-SVC --steps 0      # conversion only
    python bench/reflow_speed.py --upstream /tmp/DDSP-SVC --conversions 0  # training only
    python bench/reflow_speed.py --upstream /tmp/DDSP-SVC --threads 1     # on a busy machine

Printed per side: mean and median wall seconds, and the process's CPU seconds (all
threads). On a machine shared with other work, two intra-op threads make the wall
times swing wildly (every operator ends in a barrier that waits for a thread the OS
has paused, and the waiting spins count as CPU); ``--threads 1`` and the CPU
columns then measure the work itself, and the ratios are the ones to quote.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import dataclasses
import importlib
import json
import math
import subprocess
import tempfile
import time
import types
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from mlflow_ddsp.config import Config
from mlflow_ddsp.models.reflow_svc import ReflowUnit2Wav
from mlflow_ddsp.optimizer import build_optimizer
from mlflow_ddsp.subnormals import flushed_subnormals, subnormals_flushed
from mlflow_ddsp.training.session import intra_op_threads, training_cpu_settings
from mlflow_ddsp.vocoder import NsfHifiGanGenerator, Vocoder, default_vocoder_config, write_vocoder_config

# upstream configs/reflow.yaml (master) and its 44.1 kHz NSF-HiFiGAN
SAMPLING_RATE, BLOCK, N_UNIT, N_MELS = 44100, 512, 768, 128
T_START, LR, WEIGHT_DECAY, LAMBDA_DDSP = 0.7, 2e-4, 0.0, 1.0
DECAY_STEP, GAMMA = 50000, 0.5
INFER_STEP, METHOD = 20, "euler"
MODEL_KWARGS = dict(sampling_rate=SAMPLING_RATE, block_size=BLOCK, win_length=2048, n_unit=N_UNIT, n_spk=1,
                    use_pitch_aug=True, out_dims=N_MELS, n_layers=6, n_chans=512)  # fmt: skip
UPSTREAM_FILES = ("reflow/vocoder.py", "reflow/reflow.py", "nsf_hifigan/nvSTFT.py", "nsf_hifigan/models.py",
                  "ddsp/vocoder.py")  # fmt: skip
STUBBED = {  # module -> attributes that must exist (placeholders; never called)
    "torchaudio": (), "torchaudio.transforms": ("Resample",), "pyworld": (), "torchcrepe": (),
    "transformers": ("HubertModel", "Wav2Vec2FeatureExtractor"), "fairseq": ("checkpoint_utils",), "gin": (),
    "sklearn": (), "sklearn.cluster": ("KMeans",), "parselmouth": (), "resampy": (),
    "local_attention": ("LocalAttention",),
}  # fmt: skip


# --------------------------------------------------------------------------- synthetic inputs


def frames_for(seconds: float) -> int:
    """Frames of a ``seconds`` crop, as upstream's loader cuts them (``int(duration * sr / block)``)."""
    return int(seconds * SAMPLING_RATE / BLOCK)


def sung_melody(frames: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A sung-like line: notes of 0.25-0.75 s between 110 and 440 Hz with 5.5 Hz vibrato, and its volume.

    Returns ``(f0 [frames] Hz, volume [frames])``; note onsets glide over ~60 ms and each
    note swells and decays; one short breath (volume ~0) per ~2 s.
    """
    frame_rate = SAMPLING_RATE / BLOCK
    midi = torch.empty(frames)
    volume = torch.empty(frames)
    start = 0
    while start < frames:
        length = int(frame_rate * (0.25 + 0.5 * float(torch.rand((), generator=gen))))
        note = 45 + float(torch.randint(0, 25, (), generator=gen))
        end = min(frames, start + length)
        midi[start:end] = note
        ramp = torch.linspace(0, 1, end - start)
        level = 0.05 + 0.25 * float(torch.rand((), generator=gen))
        volume[start:end] = level * torch.sin(math.pi * ramp).clamp_min(0.15)
        start = end
    midi = F.avg_pool1d(midi[None, None], 5, 1, 2, count_include_pad=False)[0, 0]  # glides
    t = torch.arange(frames) / frame_rate
    midi = midi + 0.3 * torch.sin(2 * math.pi * 5.5 * t)
    for breath in range(frames // int(2 * frame_rate) + 1):
        at = int(float(torch.randint(0, max(1, frames - 10), (), generator=gen)))
        volume[at : at + 8] = 1e-3
    return 440.0 * 2 ** ((midi - 69) / 12), volume


def sung_audio(f0: torch.Tensor, volume: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Harmonic audio ``[frames * BLOCK]`` for frame-rate f0 (Hz) and volume: 1/k partials below 16 kHz."""
    def upsample(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None, None], scale_factor=BLOCK, mode="linear", align_corners=False)[0, 0]

    f0_s, amp = upsample(f0), upsample(volume)
    phase = torch.cumsum(2 * math.pi * f0_s.double() / SAMPLING_RATE, 0).remainder(2 * math.pi).float()
    k = torch.arange(1, 41, dtype=torch.float32)[:, None]
    partials = torch.sin(k * phase) / k * (k * f0_s < 16000)
    return amp * partials.sum(0) + 0.003 * torch.randn(f0_s.shape, generator=gen)


def training_batch(seed: int, step: int, batch: int, frames: int) -> dict[str, torch.Tensor]:
    """The batch of ``step``: units, f0, volume, spk_id, aug_shift and target audio, as upstream's loader gives.

    Half the items carry a key shift in U(-5, 5) semitones (``use_pitch_aug``): f0 is
    scaled by ``2 ** (shift / 12)`` and the target mel is taken with that key shift.
    """
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    units = torch.randn(batch, frames, N_UNIT, generator=gen)
    f0s, volumes, audios, shifts = [], [], [], []
    for _ in range(batch):
        f0, volume = sung_melody(frames, gen)
        audios.append(sung_audio(f0, volume, gen))
        shift = float(10 * torch.rand((), generator=gen) - 5) if float(torch.rand((), generator=gen)) < 0.5 else 0.0
        f0s.append(f0 * 2 ** (shift / 12))
        volumes.append(volume)
        shifts.append(shift)
    return {
        "units": units,
        "f0": torch.stack(f0s)[..., None],
        "volume": torch.stack(volumes)[..., None],
        "spk_id": torch.ones(batch, 1, dtype=torch.long),
        "aug_shift": torch.tensor(shifts).reshape(batch, 1, 1),
        "audio": torch.stack(audios),
        "shifts": shifts,
    }


def conversion_inputs(seed: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random units ``[1, T, 768]``, a sung f0 ``[1, T, 1]`` (Hz) and volume ``[1, T, 1]`` for ``seconds``."""
    gen = torch.Generator().manual_seed(seed + 7)
    frames = frames_for(seconds)
    units = torch.randn(1, frames, N_UNIT, generator=gen)
    f0, volume = sung_melody(frames, gen)
    return units, f0.reshape(1, frames, 1), volume.reshape(1, frames, 1)


# --------------------------------------------------------------------------- preparation (coordinator)


def prepare(workdir: Path, seed: int) -> None:
    """Write the shared weights: ``train.pt`` (init), ``convert.pt`` and the vocoder folder."""
    torch.manual_seed(seed)
    state = ReflowUnit2Wav(**MODEL_KWARGS).state_dict()
    torch.save(state, workdir / "train.pt")
    gen = torch.Generator().manual_seed(seed + 1)
    converted = {}
    for key, value in state.items():  # zero-initialised weights (the velocity net's output) get small ones
        if value.is_floating_point() and value.dim() >= 2 and not value.any():
            value = 0.02 * torch.randn(value.shape, generator=gen) / math.sqrt(value[0].numel())
        converted[key] = value
    torch.save(converted, workdir / "convert.pt")
    config = default_vocoder_config()
    write_vocoder_config(workdir / "vocoder", config)
    torch.manual_seed(seed + 2)
    torch.save({"generator": NsfHifiGanGenerator(config).state_dict()}, workdir / "vocoder/model")


# --------------------------------------------------------------------------- the two sides (worker processes)


def check_checkout(checkout: Path) -> None:
    """Exit with a one-line message unless ``checkout`` holds upstream's files the bench imports."""
    for rel in UPSTREAM_FILES:
        if not (checkout / rel).is_file():
            sys.exit(f"--upstream {checkout}: {rel} is missing; give a checkout of github.com/yxlllc/DDSP-SVC master")


def import_upstream(checkout: Path) -> types.SimpleNamespace:
    """Import upstream's ``reflow.vocoder`` from ``checkout``, stubbing unusable third-party modules."""
    check_checkout(checkout)
    for name, attributes in STUBBED.items():
        try:
            importlib.import_module(name)
            continue
        except Exception:  # noqa: BLE001 - whatever stops the import: stub it
            pass
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so submodules can be stubbed too
        for attribute in attributes:
            setattr(module, attribute, type(attribute, (), {}))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
    sys.path.insert(0, str(checkout))
    from reflow import vocoder  # noqa: E402

    return types.SimpleNamespace(Unit2Wav=vocoder.Unit2Wav, Vocoder=vocoder.Vocoder)


class Side:
    """One side's model, vocoder, optimizer and the calls each turn makes."""

    def __init__(self, name: str, workdir: Path, upstream: Path | None, threads: int | None):
        self.name, self.workdir = name, workdir
        voc_path = workdir / "vocoder/model"
        if name == "ours":
            cfg = Config()
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=threads))
            self.train_cpu = lambda: training_cpu_settings(cfg, torch.device("cpu"))
            self.convert_cpu = lambda: _both(intra_op_threads(threads), flushed_subnormals(True))
            self.no_grad = torch.inference_mode
            self.build = lambda: ReflowUnit2Wav(**MODEL_KWARGS)
            self.vocoder = Vocoder("nsf-hifigan", voc_path)
            self.make_optimizer = lambda p: (build_optimizer(p, LR, WEIGHT_DECAY, torch.device("cpu")), None)
            self.extract = lambda audio, shift: self.vocoder.extract(audio, keyshift=shift)
        else:
            up = import_upstream(upstream)
            self.train_cpu = self.convert_cpu = lambda: intra_op_threads(threads)
            self.no_grad = torch.no_grad
            kw = MODEL_KWARGS
            self.build = lambda: up.Unit2Wav(kw["sampling_rate"], kw["block_size"], kw["win_length"], kw["n_unit"],
                                             kw["n_spk"], kw["use_pitch_aug"], kw["out_dims"], kw["n_layers"],
                                             kw["n_chans"])  # fmt: skip
            self.vocoder = up.Vocoder("nsf-hifigan", str(voc_path), device="cpu")
            self.make_optimizer = _upstream_optimizer
            self.extract = lambda audio, shift: self.vocoder.extract(audio, keyshift=shift)
        self.model = self.optimizer = self.scheduler = None

    def load(self, weights: str) -> None:
        torch.manual_seed(0)
        self.model = self.build()
        self.model.load_state_dict(torch.load(self.workdir / weights, weights_only=True), strict=True)

    # ---- training
    def start_training(self) -> None:
        self.load("train.pt")
        self.model.train()
        self.optimizer, self.scheduler = self.make_optimizer(self.model.parameters())

    def target(self, data: dict) -> torch.Tensor:
        """Target log-mel ``[B, T, M]`` by this side's extractor (upstream precomputes it: not timed)."""
        with torch.no_grad():
            mels = [self.extract(audio[None], shift) for audio, shift in zip(data["audio"], data["shifts"])]
        return torch.cat(mels)

    def train_step(self, data: dict, gt_spec: torch.Tensor) -> tuple[float, float]:
        self.optimizer.zero_grad()
        ddsp_loss, reflow_loss = self.model(data["units"].float(), data["f0"], data["volume"], data["spk_id"],
                                            aug_shift=data["aug_shift"], vocoder=self.vocoder, gt_spec=gt_spec,
                                            infer=False, t_start=T_START)  # fmt: skip
        if torch.isnan(ddsp_loss) or torch.isnan(reflow_loss):
            raise ValueError(f"{self.name}: NaN loss")
        loss = LAMBDA_DDSP * ddsp_loss + reflow_loss
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return ddsp_loss.item(), reflow_loss.item()

    # ---- conversion
    def start_conversion(self) -> None:
        self.optimizer = self.scheduler = None
        self.load("convert.pt")
        self.model.eval()
        if self.name == "ours":
            self.vocoder.load()  # read the weights now (upstream's are read by the warm-up conversion)

    def convert(self, units, f0, volume) -> torch.Tensor:
        kwargs = {} if self.name == "ours" else {"use_tqdm": False}
        with self.no_grad():
            wav = self.model(units, f0, volume, vocoder=self.vocoder, infer=True, return_wav=True,
                             infer_step=INFER_STEP, method=METHOD, t_start=T_START, **kwargs)  # fmt: skip
        return wav.reshape(wav.shape[0], -1).clone()


def _upstream_optimizer(parameters):
    """``torch.optim.AdamW`` and ``StepLR`` as upstream's ``train_reflow.py`` sets them up (fresh run)."""
    optimizer = torch.optim.AdamW(parameters)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"], group["weight_decay"] = LR, LR, WEIGHT_DECAY
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=DECAY_STEP, gamma=GAMMA, last_epoch=-2)


@contextmanager
def _both(first, second):
    """Enter two context managers as one (the first outermost)."""
    with ExitStack() as stack:
        stack.enter_context(first)
        stack.enter_context(second)
        yield


def worker(name: str, opts: argparse.Namespace, go_fd: int, done_fd: int) -> None:
    """Take one turn (a training step or a conversion) each time the coordinator says so."""

    def wait() -> None:
        if os.read(go_fd, 1) != b"g":
            raise SystemExit(f"{name}: the coordinator went away")

    def done() -> None:
        os.write(done_fd, b"d")

    side = Side(name, opts.workdir, opts.upstream, opts.threads)
    frames = frames_for(opts.crop)
    result = {"train": [], "losses": [], "convert": [], "warmup_convert": None}
    if opts.steps:
        side.start_training()
        with side.train_cpu():
            result["threads"], result["flushed"] = torch.get_num_threads(), subnormals_flushed()
            for step in range(opts.steps + 1):  # step 0 warms up
                wait()  # everything this process does happens in its turn, the untimed batch too
                data = training_batch(opts.seed, step, opts.batch, frames)
                gt_spec = side.target(data)
                torch.manual_seed(opts.seed + step)
                wall, cpu = time.perf_counter(), time.process_time()
                losses = side.train_step(data, gt_spec)
                result["train"].append((time.perf_counter() - wall, time.process_time() - cpu))
                result["losses"].append(losses)
                done()
    if opts.conversions:
        side.start_conversion()
        warm = conversion_inputs(opts.seed, 1.0)
        clip = conversion_inputs(opts.seed, opts.clip)
        with side.convert_cpu():
            result["threads_convert"], result["flushed_convert"] = torch.get_num_threads(), subnormals_flushed()
            for turn in range(opts.conversions + 1):  # turn 0: a 1 s warm-up
                wait()
                torch.manual_seed(opts.seed)
                wall, cpu = time.perf_counter(), time.process_time()
                wav = side.convert(*(warm if turn == 0 else clip))
                elapsed = (time.perf_counter() - wall, time.process_time() - cpu)
                if turn == 0:
                    result["warmup_convert"] = elapsed
                else:
                    result["convert"].append(elapsed)
                    torch.save(wav, opts.workdir / f"{name}_wav.pt")
                done()
    (opts.workdir / f"{name}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- coordinator and report


def side_by_side(opts: argparse.Namespace) -> None:
    upstream = opts.upstream.resolve()
    check_checkout(upstream)
    with tempfile.TemporaryDirectory(prefix="reflow-speed-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, opts.seed)
        names = ("ours", "upstream")
        procs, pipes = {}, {}
        for name in names:
            go_r, go_w = os.pipe()
            done_r, done_w = os.pipe()
            cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--fds", f"{go_r},{done_w}",
                   "--upstream", str(upstream), "--seed", str(opts.seed), "--steps", str(opts.steps),
                   "--batch", str(opts.batch), "--crop", str(opts.crop), "--clip", str(opts.clip),
                   "--conversions", str(opts.conversions)]  # fmt: skip
            cmd += ["--threads", str(opts.threads)] if opts.threads else []
            procs[name] = subprocess.Popen(cmd, pass_fds=(go_r, done_w), stdout=subprocess.DEVNULL)
            os.close(go_r)
            os.close(done_w)
            pipes[name] = (go_w, done_r)
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; seed {opts.seed}; upstream {opts.upstream}; "
              f"each side in its own process, turns in ABBA order; machine: {calibration.machine()}",
              flush=True)  # fmt: skip
        turns = (opts.steps + 1 if opts.steps else 0) + (opts.conversions + 1 if opts.conversions else 0)
        for turn in range(turns):
            order = names if turn % 2 == 0 else names[::-1]
            for name in order:
                go_w, done_r = pipes[name]
                os.write(go_w, b"g")
                if os.read(done_r, 1) != b"d":
                    for proc in procs.values():
                        proc.wait()
                    sys.exit(f"the {name} side failed (exit {procs[name].returncode}; its stderr says why)")
        for name, proc in procs.items():
            os.close(pipes[name][0])
            if proc.wait() != 0:
                sys.exit(f"the {name} side failed (exit {proc.returncode})")
        results = {name: json.loads((workdir / f"{name}.json").read_text()) for name in names}
        wavs = {name: torch.load(workdir / f"{name}_wav.pt") for name in names} if opts.conversions else {}
        report(results, wavs, opts)
        print(f"\n(load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: other work on the "
              "machine slows both sides alike, turn by turn; medians resist its bursts)")


def report(results: dict, wavs: dict, opts: argparse.Namespace) -> None:
    ours, up = results["ours"], results["upstream"]
    if opts.steps:
        print(f"\n1. training: upstream configs/reflow.yaml model (16.94 M params), "
              f"batch {opts.batch} x {opts.crop:g} s crops ({frames_for(opts.crop)} frames; "
              f"upstream's default is 48 x 2 s on a GPU), "
              f"{opts.steps} timed steps each after 1 warm-up")  # fmt: skip
        for name, r in results.items():
            print(f"   {name}: {r['threads']} intra-op thread(s), subnormals "
                  f"{'flushed' if r['flushed'] else 'not flushed'}")  # fmt: skip
        print(f"   {'':<12} {'steps/s':>8} {'s/step':>7} {'CPU s/step':>11} {'audio s/s':>10} {'median s':>9}")
        rate, medians, cpus = {}, {}, {}
        for name, r in results.items():
            times = r["train"][1:]
            wall = sum(t for t, _ in times) / len(times)
            cpu = sum(c for _, c in times) / len(times)
            median = sorted(t for t, _ in times)[len(times) // 2]
            rate[name], medians[name], cpus[name] = 1 / wall, median, cpu
            print(f"   {name:<12} {1 / wall:>8.3f} {wall:>7.3f} {cpu:>11.3f} {opts.batch * opts.crop / wall:>10.2f} "
                  f"{median:>9.3f}")  # fmt: skip
        print(f"   {'ours/upstream':<12} {rate['ours'] / rate['upstream']:>8.2f}x steps/s (mean), "
              f"{medians['upstream'] / medians['ours']:.2f}x (median), {cpus['upstream'] / cpus['ours']:.2f}x (CPU s)"
              f"   (warm-up step: ours {ours['train'][0][0]:.2f} s, upstream {up['train'][0][0]:.2f} s)")  # fmt: skip
        print("   losses (same weights, same batches, torch reseeded before each step):")
        print(f"   {'step':>6} {'ours ddsp':>10} {'up ddsp':>10} {'ours reflow':>12} {'up reflow':>10} "
              f"{'total ours-up':>14}")  # fmt: skip
        n = len(ours["losses"])
        shown = sorted({1, n // 4, n // 2, 3 * n // 4, n} - {0})
        for step in shown:
            (od, orf), (ud, urf) = ours["losses"][step - 1], up["losses"][step - 1]
            print(f"   {step:>6} {od:>10.5f} {ud:>10.5f} {orf:>12.5f} {urf:>10.5f} {od + orf - ud - urf:>+14.2e}")
    if opts.conversions:
        print(f"\n2. conversion of a {opts.clip:g} s synthetic sung clip ({frames_for(opts.clip)} frames): "
              f"DDSP stage + {INFER_STEP} {METHOD} reflow steps (t_start {T_START}) + NSF-HiFiGAN "
              f"(random weights, default config), "
              f"{opts.conversions} timed runs each after a 1 s warm-up")  # fmt: skip
        for name, r in results.items():
            how = "inference_mode" if name == "ours" else "no_grad"
            print(f"   {name}: {r['threads_convert']} intra-op thread(s), subnormals "
                  f"{'flushed' if r['flushed_convert'] else 'not flushed'}, {how}")  # fmt: skip
        print(f"   {'':<12} {'s/clip':>7} {'RTF':>6} {'CPU s/clip':>11} {'median s':>9} {'best s':>7}")
        per, medians, cpus = {}, {}, {}
        for name, r in results.items():
            wall = sum(t for t, _ in r["convert"]) / len(r["convert"])
            cpu = sum(c for _, c in r["convert"]) / len(r["convert"])
            per[name], cpus[name] = wall, cpu
            medians[name] = sorted(t for t, _ in r["convert"])[len(r["convert"]) // 2]
            print(f"   {name:<12} {wall:>7.2f} {wall / opts.clip:>6.3f} {cpu:>11.2f} {medians[name]:>9.2f} "
                  f"{min(t for t, _ in r['convert']):>7.2f}")  # fmt: skip
        a, b = wavs["ours"], wavs["upstream"]
        diff = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        print(f"   {'ours/upstream':<12} {per['upstream'] / per['ours']:>7.2f}x speed (upstream s / ours s; "
              f"{medians['upstream'] / medians['ours']:.2f}x by medians, "
              f"{cpus['upstream'] / cpus['ours']:.2f}x by CPU s)")  # fmt: skip
        print(f"   output: ours {list(a.shape)}, upstream {list(b.shape)}, max |ours - upstream| = {diff:.2e} "
              f"(peak |upstream| {b.abs().max().item():.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, help="an extracted checkout of github.com/yxlllc/DDSP-SVC master")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per side (0: skip training)")
    parser.add_argument("--batch", type=int, default=2, help="training batch size (upstream's default: 48)")
    parser.add_argument("--crop", type=float, default=2.0, help="training crop in seconds (upstream: 2)")
    parser.add_argument("--conversions", type=int, default=3, help="timed conversions per side (0: skip)")
    parser.add_argument("--clip", type=float, default=10.0, help="conversion clip in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both sides (default: torch's, one per core; ours flushes "
                             "subnormals as `mlflow-ddsp train` does)")
    parser.add_argument("--worker", choices=["ours", "upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        go_fd, done_fd = (int(x) for x in opts.fds.split(","))
        worker(opts.worker, opts, go_fd, done_fd)
    elif opts.upstream is None:
        parser.error("give --upstream PATH (an extracted DDSP-SVC checkout; see the module docstring)")
    else:
        side_by_side(opts)


if __name__ == "__main__":
    main()
