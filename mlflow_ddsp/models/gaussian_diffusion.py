"""Gaussian diffusion over normalised mels: DDSP-SVC 5.0's shallow-diffusion refinement stage.

Source: upstream DDSP-SVC ``diffusion/diffusion.py`` (branch ``master``), which
calls two vendored solvers, ``diffusion/dpm_solver_pytorch.py`` (DPM-Solver++,
Lu et al. 2022, arXiv:2211.01095) and ``diffusion/uni_pc.py`` (UniPC, Zhao et
al. 2023, arXiv:2302.04867). Only the one configuration of each that upstream
uses is implemented here, from the papers' update rules.

Notation: ``N = 1000`` steps, ``beta_n = linspace(1e-4, max_beta, N)`` (float64,
stored as float32 buffers), ``abar_n = prod_{m <= n} (1 - beta_m)``; the forward
process is ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps`` and the network
``eps(x_n, n, cond)`` predicts ``eps``. Mels are normalised to [-1, 1] with
``spec_min``/``spec_max`` before diffusion and mapped back after.

Training (``infer=False``): ``n ~ randint(0, k_step)`` per item, one
``eps ~ N(0, I)``, loss ``mse(eps, eps(x_n, n, cond))``.

Inference (``infer=True``): shallow diffusion from the DDSP mel. With a reference
mel and ``k_step`` the start is that mel noised to step ``k_step - 1``; without
either, pure noise at step ``N``. Then, for ``infer_speedup > 1``:

- ``'dpm-solver'``: DPM-Solver++ (data prediction), multistep, order 2, on the
  discrete-time schedule of ``betas[:k_step]`` (continuous time ``t`` in
  ``[1/k, 1]``, ``log alpha_t`` piecewise linear between the knots
  ``t_n = (n + 1) / k``), ``k_step // infer_speedup`` time-uniform steps; the first
  step is first order, and with fewer than 10 steps so is the last;
- ``'unipc'``: UniPC with B(h) = expm1(-h) ("bh2"), data prediction, multistep
  order 2 on the same schedule; first and last steps first order, the last without
  corrector;
- ``'ddim'``: deterministic DDIM over steps ``k-1-r, ..., 0`` in strides of
  ``infer_speedup`` (``r = (k - 1) % infer_speedup``);
- ``'pndm'``: PLMS (Liu et al. 2022) over the same steps; the first step is a
  Heun-like pair of network calls, then 2-, 3- and 4-step Adams-Bashforth;

and for ``infer_speedup == 1`` (or ``method=None``) ancestral DDPM over every step.

Random numbers come from torch's global RNG with upstream's calls in upstream's
order: training ``torch.randint(0, k, (B,))`` then ``torch.randn_like(x_0)``;
inference ``torch.randn_like(mel)`` (shallow start) or ``torch.randn(shape)``
(pure-noise start), plus one ``torch.randn(shape)`` per DDPM step.

Deviations, all where upstream fails: PNDM runs for B > 1 and when ``k_step <=
infer_speedup`` (upstream's ``max(t - interval, 0)`` raises on a batch and hands
the network a Python int at step 0); DPM-Solver and UniPC with fewer than 2 steps
raise ValueError (upstream: AssertionError); ``k_step`` outside ``[1, timesteps]``
raises ValueError (upstream: an index error, or silently a wrong step).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["METHODS", "DiscreteVPSchedule", "GaussianDiffusion"]

#: samplers :meth:`GaussianDiffusion.forward` accepts (``infer.method``)
METHODS = ("dpm-solver", "unipc", "ddim", "pndm")

# DPM-Solver drops the schedule's tail where the half log-SNR falls below this
# (dpm_solver_pytorch.py NoiseScheduleVP.numerical_clip_alpha); the linear
# schedule's lowest value is about -5.06, so it only matters for larger max_beta
_DPM_LAMBDA_FLOOR = -5.1

_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def _schedule_tables(timesteps: int, max_beta: float) -> dict[str, np.ndarray]:
    """The float64 tables of the linear beta schedule, keyed by upstream's buffer names."""
    betas = np.linspace(1e-4, max_beta, timesteps)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate(([1.0], abar[:-1]))
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
        # posterior q(x_{n-1} | x_n, x_0): variance (log clipped: it is 0 at n = 0) and mean weights
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }


def _at(table: Tensor, step: Tensor, ndim: int) -> Tensor:
    """``table[step]`` for a ``[B]`` step tensor, shaped ``[B, 1, ..., 1]`` (``ndim`` dims)."""
    return table.gather(-1, step).reshape(step.shape[0], *((1,) * (ndim - 1)))


class DiscreteVPSchedule:
    """Continuous-time view of a discrete diffusion schedule, for the ODE solvers.

    Steps ``n = 0 .. k-1`` map to times ``t_n = (n + 1) / k``; ``log alpha_t`` (half
    the log of ``abar``) is linear between those knots and extended linearly beyond
    them. ``alpha_t = exp(log alpha_t)``, ``sigma_t = sqrt(1 - alpha_t^2)``, half
    log-SNR ``lambda_t = log alpha_t - log sigma_t``. The network's step input for
    time ``t`` is ``(t - 1/k) k``. Source: ``NoiseScheduleVP(schedule='discrete')``
    and ``model_wrapper`` in upstream's ``diffusion/dpm_solver_pytorch.py`` and
    ``diffusion/uni_pc.py`` (master); all in float32 as there.
    """

    def __init__(self, betas: Tensor, lambda_floor: float | None = None) -> None:
        """
        Args:
            betas: ``[k]`` float32 betas of the steps the solver covers.
            lambda_floor: drop the trailing knots whose ``lambda`` is below this
                (DPM-Solver's clip; UniPC passes None).
        """
        log_alpha = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        if lambda_floor is not None:
            lambdas = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
            n_below = int((lambdas < lambda_floor).sum())
            if n_below > 0:
                log_alpha = log_alpha[:-n_below]
        self.log_alpha_knots = log_alpha.to(torch.float32)
        self.n = int(self.log_alpha_knots.shape[0])
        self.t_knots = torch.linspace(0.0, 1.0, self.n + 1)[1:].to(device=betas.device, dtype=torch.float32)

    def log_alpha(self, t: Tensor) -> Tensor:
        """``log alpha_t`` for times ``t`` (any shape) -> ``[t.numel()]``."""
        t = t.reshape(-1)
        xp, yp = self.t_knots, self.log_alpha_knots
        # segment j covers [xp[j], xp[j + 1]]; points outside use the end segments
        j = (torch.searchsorted(xp, t) - 1).clamp(0, self.n - 2)
        x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t``: ``[t.numel()]``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma_t = sqrt(1 - alpha_t^2)``: ``[t.numel()]``."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t: Tensor) -> Tensor:
        """``lambda_t = log alpha_t - log sigma_t``: ``[t.numel()]``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def network_step(self, t: Tensor) -> Tensor:
        """The (fractional) step index the network was trained with for time ``t``."""
        return (t - 1.0 / self.n) * self.n

    def time_grid(self, steps: int) -> Tensor:
        """``steps + 1`` times from 1 down to ``1/k``, equally spaced (``time_uniform``)."""
        return torch.linspace(1.0, 1.0 / self.n, steps + 1).to(self.t_knots.device)


class GaussianDiffusion(nn.Module):
    """Epsilon-prediction Gaussian diffusion around a denoiser network.

    ``denoise_fn(x [B, 1, M, T], step [B], cond [B, M_cond, T]) -> [B, 1, M, T]``
    (:class:`~mlflow_ddsp.models.naive_v2_diff.NaiveV2Diff` in 5.0); ``step`` is an
    integer tensor for DDPM/DDIM/PNDM and training, a float tensor (fractional
    steps) for DPM-Solver and UniPC, as upstream. When sampling, a denoiser with a
    ``prepare(cond)`` method gets ``prepare(cond)`` in place of ``cond`` at every step
    (computed once per sampling call; must give the same outputs).

    State dict: ``denoise_fn.*`` plus the float32 buffers ``betas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``log_one_minus_alphas_cumprod``,
    ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod``,
    ``posterior_variance``, ``posterior_log_variance_clipped``,
    ``posterior_mean_coef1``, ``posterior_mean_coef2`` (each ``[timesteps]``) and
    ``spec_min``, ``spec_max`` (``[1, 1, 1]``), upstream's names.
    """

    def __init__(
        self,
        denoise_fn: nn.Module | Callable[..., Tensor],
        out_dims: int = 128,
        max_beta: float = 0.02,
        spec_min: float = -12.0,
        spec_max: float = 2.0,
        *,
        timesteps: int = 1000,
        k_step: int = 1000,
    ) -> None:
        """
        Args:
            denoise_fn: the noise-prediction network (state_dict prefix ``denoise_fn``).
            out_dims: mel bins ``M``.
            max_beta: the last beta of the linear schedule (first is 1e-4).
            spec_min: log-mel value mapped to -1.
            spec_max: log-mel value mapped to +1.
            timesteps: schedule length ``N`` (upstream 1000).
            k_step: default depth when ``forward`` gets ``k_step=None``: training draws
                steps in ``[0, k_step)``, inference starts from noise at this step
                (upstream's constructor default 1000; the SVC models keep it).

        Raises:
            ValueError: a size is not a positive integer, ``k_step > timesteps``,
                ``max_beta`` is not in (1e-4, 1), or ``spec_max <= spec_min``.
        """
        super().__init__()
        for name, value in (("out_dims", out_dims), ("timesteps", timesteps), ("k_step", k_step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GaussianDiffusion {name}={value!r}: must be a positive integer")
        if timesteps < 2:
            raise ValueError(f"GaussianDiffusion timesteps={timesteps}: must be >= 2")
        if k_step > timesteps:
            raise ValueError(f"GaussianDiffusion k_step={k_step}: must be <= timesteps={timesteps}")
        if not 1e-4 < max_beta < 1:
            raise ValueError(f"GaussianDiffusion max_beta={max_beta!r}: must be in (1e-4, 1)")
        if not spec_max > spec_min:
            raise ValueError(f"GaussianDiffusion spec_max={spec_max!r} must exceed spec_min={spec_min!r}")
        self.denoise_fn = denoise_fn
        self.out_dims = out_dims
        self.num_timesteps = timesteps
        self.k_step = k_step
        tables = _schedule_tables(timesteps, max_beta)
        for name in _BUFFERS:
            self.register_buffer(name, torch.tensor(tables[name], dtype=torch.float32))
        self.register_buffer("spec_min", torch.tensor([[[spec_min]]], dtype=torch.float32))
        self.register_buffer("spec_max", torch.tensor([[[spec_max]]], dtype=torch.float32))

    # -- normalisation and the forward process ---------------------------------------------

    def norm_spec(self, x: Tensor) -> Tensor:
        """Log-mel ``[B, T, M]`` -> [-1, 1] scale: ``2 (x - min) / (max - min) - 1``."""
        return (x - self.spec_min) / (self.spec_max - self.spec_min) * 2 - 1

    def denorm_spec(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`norm_spec`."""
        return (x + 1) / 2 * (self.spec_max - self.spec_min) + self.spec_min

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Noise ``x_start [B, 1, M, T]`` to steps ``t [B]`` (or ``[1]``): ``sqrt(abar) x + sqrt(1 - abar) eps``.

        ``noise`` defaults to ``torch.randn_like(x_start)`` (global RNG).
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _at(self.sqrt_alphas_cumprod, t, x_start.dim()) * x_start
            + _at(self.sqrt_one_minus_alphas_cumprod, t, x_start.dim()) * noise
        )

    # -- training ------------------------------------------------------------------------

    def p_losses(self, x_start: Tensor, t: Tensor, cond: Tensor, noise: Tensor | None = None) -> Tensor:
        """L2 epsilon-prediction loss at steps ``t [B]`` for ``x_start [B, 1, M, T]``; scalar."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start, t, noise)
        return F.mse_loss(noise, self.denoise_fn(x_noisy, t, cond))

    # -- inference -----------------------------------------------------------------------

    def forward(
        self,
        condition: Tensor,
        gt_spec: Tensor | None = None,
        infer: bool = True,
        infer_speedup: int = 10,
        method: str | None = "dpm-solver",
        k_step: int | None = None,
        use_tqdm: bool = False,
    ) -> Tensor:
        """Training loss or refined mel (upstream ``GaussianDiffusion.forward``).

        Args:
            condition: ``[B, T, M_cond]`` the denoiser's condition (5.0: the DDSP mel).
            gt_spec: ``[B, T, M]`` log-mel: the training target, or at inference the mel
                to start from (noised to step ``k_step - 1``).
            infer: sample (True) or return the training loss (False).
            infer_speedup: steps skipped per solver step (``infer.speedup``); 1 runs DDPM.
            method: one of :data:`METHODS` (``infer.method``); ignored when
                ``infer_speedup == 1`` or None (DDPM).
            k_step: diffusion depth (``model.k_step_max`` in training, the shallow
                diffusion depth at inference); None uses the constructor's ``k_step``
                (and, at inference, pure noise, also when ``gt_spec`` is given).
            use_tqdm: accepted for upstream's call form; no progress bar is shown.

        Returns:
            Training: scalar loss. Inference: mel ``[B, T, M]``.

        Raises:
            ValueError: ``k_step`` is not in ``[1, timesteps]``, ``infer_speedup < 1``,
                ``method`` is unknown, DPM-Solver/UniPC would take fewer than 2 steps
                (``k_step // infer_speedup < 2``), or ``gt_spec`` is missing in training.
        """
        del use_tqdm
        if k_step is not None and (isinstance(k_step, bool) or not isinstance(k_step, int)):
            raise ValueError(f"k_step={k_step!r}: must be an integer")
        if k_step is not None and not 1 <= k_step <= self.num_timesteps:
            raise ValueError(f"k_step={k_step}: must be in [1, {self.num_timesteps}] (model.k_step_max bounds it)")
        cond = condition.transpose(1, 2)
        batch = condition.shape[0]
        if not infer:
            if gt_spec is None:
                raise ValueError("training (infer=False) needs gt_spec [B, T, M]")
            x_start = self.norm_spec(gt_spec).transpose(1, 2)[:, None, :, :]
            depth = self.k_step if k_step is None else k_step
            t = torch.randint(0, depth, (batch,), device=condition.device).long()
            return self.p_losses(x_start, t, cond)

        if isinstance(infer_speedup, bool) or not isinstance(infer_speedup, int) or infer_speedup < 1:
            raise ValueError(f"infer_speedup={infer_speedup!r}: must be an integer >= 1")
        solver = method is not None and infer_speedup > 1
        if solver and method not in METHODS:
            raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
        shape = (batch, 1, self.out_dims, cond.shape[2])
        if gt_spec is None or k_step is None:
            depth = self.k_step
        else:
            depth = k_step
        if solver and method in ("dpm-solver", "unipc") and depth // infer_speedup < 2:
            raise ValueError(
                f"{method} needs at least 2 steps: k_step // infer_speedup = {depth} // {infer_speedup} "
                f"= {depth // infer_speedup}"
            )
        if gt_spec is None or k_step is None:
            x = torch.randn(shape, device=condition.device)
        else:
            x_start = self.norm_spec(gt_spec).transpose(1, 2)[:, None, :, :]
            x = self.q_sample(x_start, torch.tensor([depth - 1], device=condition.device).long())

        with torch.no_grad():
            # the condition is the same at every step: a denoiser with ``prepare`` projects it once
            prepare = getattr(self.denoise_fn, "prepare", None)
            if callable(prepare):
                cond = prepare(cond)
            if not solver:
                x = self._ddpm(x, cond, depth)
            elif method == "dpm-solver":
                x = self._dpm_solver_pp(x, cond, depth, depth // infer_speedup)
            elif method == "unipc":
                x = self._unipc_bh2(x, cond, depth, depth // infer_speedup)
            elif method == "ddim":
                x = self._ddim(x, cond, depth, infer_speedup)
            else:
                x = self._pndm(x, cond, depth, infer_speedup)
        return self.denorm_spec(x.squeeze(1).transpose(1, 2))

    def _steps(self, x: Tensor, step: int) -> Tensor:
        return torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)

    def _ddpm(self, x: Tensor, cond: Tensor, depth: int) -> Tensor:
        """Ancestral sampling through every step ``depth-1 .. 0`` (one ``randn`` each, as upstream)."""
        for i in reversed(range(depth)):
            t = self._steps(x, i)
            eps = self.denoise_fn(x, t, cond)
            x0 = _at(self.sqrt_recip_alphas_cumprod, t, x.dim()) * x - _at(
                self.sqrt_recipm1_alphas_cumprod, t, x.dim()
            ) * eps
            mean = _at(self.posterior_mean_coef1, t, x.dim()) * x0 + _at(self.posterior_mean_coef2, t, x.dim()) * x
            log_var = _at(self.posterior_log_variance_clipped, t, x.dim())
            noise = torch.randn(x.shape, device=x.device)
            keep = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.dim() - 1)))
            x = mean + keep * (0.5 * log_var).exp() * noise
        return x

    def _ddim(self, x: Tensor, cond: Tensor, depth: int, stride: int) -> Tensor:
        """Deterministic DDIM: ``x' = sqrt(a') (x / sqrt(a) + (sqrt(1/a' - 1) - sqrt(1/a - 1)) eps)``.

        ``a = abar_n``, ``a' = abar_{max(n - stride, 0)}`` (upstream ``p_sample_ddim``).
        """
        for i in reversed(range(0, depth, stride)):
            t = self._steps(x, i)
            a_t = _at(self.alphas_cumprod, t, x.dim())
            a_prev = _at(self.alphas_cumprod, (t - stride).clamp(min=0), x.dim())
            eps = self.denoise_fn(x, t, cond)
            x = a_prev.sqrt() * (x / a_t.sqrt() + (((1 - a_prev) / a_prev).sqrt() - ((1 - a_t) / a_t).sqrt()) * eps)
        return x

    def _pndm(self, x: Tensor, cond: Tensor, depth: int, stride: int) -> Tensor:
        """PLMS (upstream ``p_sample_plms``): linear multistep on the predicted noise.

        Transfer from step ``n`` to ``p = max(n - stride, 0)`` with noise ``e``:
        ``x + (a_p - a_n) (x / (s_n (s_n + s_p)) - e / (s_n (sqrt((1 - a_p) a_n) + sqrt((1 - a_n) a_p))))``,
        ``a = abar``, ``s = sqrt(abar)``. ``e`` mixes the current and up to three earlier
        network outputs with Adams-Bashforth weights; the first step averages the
        outputs at ``n`` and at ``p`` after a trial transfer (two network calls).
        """

        def transfer(x: Tensor, e: Tensor, t: Tensor) -> Tensor:
            a_t = _at(self.alphas_cumprod, t, x.dim())
            a_prev = _at(self.alphas_cumprod, (t - stride).clamp(min=0), x.dim())
            s_t, s_prev = a_t.sqrt(), a_prev.sqrt()
            delta = (a_prev - a_t) * (
                (1 / (s_t * (s_t + s_prev))) * x
                - 1 / (s_t * (((1 - a_prev) * a_t).sqrt() + ((1 - a_t) * a_prev).sqrt())) * e
            )
            return x + delta

        history: deque[Tensor] = deque(maxlen=4)
        for i in reversed(range(0, depth, stride)):
            t = self._steps(x, i)
            eps = self.denoise_fn(x, t, cond)
            if not history:
                x_trial = transfer(x, eps, t)
                eps_next = self.denoise_fn(x_trial, (t - stride).clamp(min=0), cond)
                e = (eps + eps_next) / 2
            elif len(history) == 1:
                e = (3 * eps - history[-1]) / 2
            elif len(history) == 2:
                e = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
            else:
                e = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
            x = transfer(x, e, t)
            history.append(eps)
        return x

    def _data_prediction(self, schedule: DiscreteVPSchedule, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``x0 = (x - sigma_t eps(x, step(t))) / alpha_t`` at the solver time ``t`` (0-dim)."""
        step = schedule.network_step(t.expand(x.shape[0]))
        eps = self.denoise_fn(x, step, cond)
        return (x - schedule.sigma(t) * eps) / schedule.alpha(t)

    def _dpm_solver_pp(self, x: Tensor, cond: Tensor, depth: int, steps: int) -> Tensor:
        """Multistep DPM-Solver++ (2M), time-uniform, ``steps`` network calls.

        With ``h = lambda_t - lambda_s`` and data predictions ``D``:
        first order ``x_t = (sigma_t / sigma_s) x - alpha_t expm1(-h) D_s``; second order
        adds ``- 0.5 alpha_t expm1(-h) (h / h_prev) (D_s - D_prev)`` (paper Alg. 2,
        upstream's ``solver_type='dpmsolver'`` form). The first step is first order, and
        the last too when ``steps < 10`` (``lower_order_final``).
        """
        sched = DiscreteVPSchedule(self.betas[:depth], lambda_floor=_DPM_LAMBDA_FLOOR)
        grid = sched.time_grid(steps)
        t_prev = grid[0]
        d_prev = self._data_prediction(sched, x, t_prev, cond)
        t_older = d_older = None
        for step in range(1, steps + 1):
            t = grid[step]
            lambda_prev, lambda_t = sched.half_log_snr(t_prev), sched.half_log_snr(t)
            sigma_prev, sigma_t = sched.sigma(t_prev), sched.sigma(t)
            alpha_t = torch.exp(sched.log_alpha(t))
            h = lambda_t - lambda_prev
            phi_1 = torch.expm1(-h)
            second_order = t_older is not None and (steps >= 10 or step < steps)
            if second_order:
                h_prev = lambda_prev - sched.half_log_snr(t_older)
                d1 = (1.0 / (h_prev / h)) * (d_prev - d_older)
                x = (sigma_t / sigma_prev) * x - (alpha_t * phi_1) * d_prev - 0.5 * (alpha_t * phi_1) * d1
            else:
                x = sigma_t / sigma_prev * x - alpha_t * phi_1 * d_prev
            t_older, d_older, t_prev = t_prev, d_prev, t
            if step < steps:  # the final value needs no network call
                d_prev = self._data_prediction(sched, x, t, cond)
        return x

    def _unipc_bh2(self, x: Tensor, cond: Tensor, depth: int, steps: int) -> Tensor:
        """Multistep UniPC, order 2, data prediction, ``B(h) = expm1(-h)``; ``steps`` network calls.

        Each step from ``s`` to ``t`` (``h = lambda_t - lambda_s``, ``hh = -h``) starts at
        ``x_pred = (sigma_t / sigma_s) x - alpha_t expm1(hh) D_s`` (plus
        ``- alpha_t B(h) 0.5 D1`` when a previous ``D`` exists, ``D1 = (D_prev - D_s) / r``,
        ``r = (lambda_prev - lambda_s) / h``). The corrector evaluates ``D_t`` at the
        prediction and replaces the last term by ``- alpha_t B(h) (rho_1 D1 + rho_2 (D_t - D_s))``
        with ``rho`` solving ``[[1, 1], [r, 1]] rho = [g1, 2 g2] / B(h)``,
        ``g1 = expm1(hh)/hh - 1``, ``g2 = g1/hh - 1/2`` (first order: ``rho_2 = 1/2``).
        ``D_t`` at the *predicted* point is kept for the next step. The last step is
        first order without corrector.
        """
        sched = DiscreteVPSchedule(self.betas[:depth])
        grid = sched.time_grid(steps)
        t_prev = grid[0]
        d_prev = self._data_prediction(sched, x, t_prev, cond)
        t_older = d_older = None
        for step in range(1, steps + 1):
            t = grid[step]
            last = step == steps
            order = 1 if (t_older is None or last) else 2
            lambda_prev, lambda_t = sched.half_log_snr(t_prev), sched.half_log_snr(t)
            sigma_prev, sigma_t = sched.sigma(t_prev), sched.sigma(t)
            alpha_t = torch.exp(sched.log_alpha(t))
            hh = -(lambda_t - lambda_prev)
            h_phi_1 = torch.expm1(hh)
            b_h = torch.expm1(hh)
            x_base = sigma_t / sigma_prev * x - alpha_t * h_phi_1 * d_prev
            if order == 2:
                r = (sched.half_log_snr(t_older) - lambda_prev) / -hh
                d1 = (d_older - d_prev) / r
                x_pred = x_base - alpha_t * b_h * (0.5 * d1)
            else:
                x_pred = x_base
            if last:
                x = x_pred
                break
            d_t = self._data_prediction(sched, x_pred, t, cond)
            if order == 2:
                g1 = h_phi_1 / hh - 1
                g2 = g1 / hh - 1 / 2
                lhs = torch.stack([torch.ones(2, device=x.device), torch.cat([r, r.new_ones(1)])])
                rho = torch.linalg.solve(lhs, torch.cat([g1 * 1 / b_h, g2 * 2 / b_h]))
                x = x_base - alpha_t * b_h * (rho[0] * d1 + rho[-1] * (d_t - d_prev))
            else:
                x = x_base - alpha_t * b_h * (0 + 0.5 * (d_t - d_prev))
            t_older, d_older, t_prev, d_prev = t_prev, d_prev, t, d_t
        return x
