"""Rectified flow over normalised mels: DDSP-SVC 6.0's refinement stage.

Source: upstream DDSP-SVC ``reflow/reflow.py`` (branch ``master``; 6.1 keeps the
same file). Notation: ``x_1`` the target mel normalised to [-1, 1], ``x_0 ~ N(0, I)``,
``x_t = x_0 + t (x_1 - x_0)``; the network ``v(x_t, 1000 t, cond)`` predicts the
velocity ``x_1 - x_0``.

Training: ``t = clip(t_start + (1 - t_start) * U[0, 1), 1e-7, 1 - 1e-7)``, loss
``mean(w(t) * (x_1 - x_0 - v)^2)`` with the logit-normal density
``w(t) = 0.398942 / (t (1 - t)) * exp(-0.5 * log(t / (1 - t))^2)`` (the constant
is upstream's rounded ``1/sqrt(2 pi)``, kept as is).

Inference: start at ``x = t_start * norm(mel) + (1 - t_start) * N(0, I)`` and
integrate ``dx/dt = v`` from ``t_start`` to 1 in ``infer_step`` steps of
``dt = (1 - t_start) / infer_step`` (Euler, or classical RK4 with four network
calls a step); ``t`` is a float32 ``[B]`` tensor accumulated ``t + dt`` per step,
as upstream, so the network sees the same (rounded) times.

Random numbers come from torch's global RNG with upstream's calls in upstream's
order: training ``torch.rand(B)`` then ``torch.randn_like(x_1)``; inference one
``torch.randn([B, 1, M, T])``. The module registers no buffers; its only
state_dict entries are ``velocity_fn.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["METHODS", "logit_normal_weight", "RectifiedFlow"]

#: ODE solvers :meth:`RectifiedFlow.forward` accepts (``infer.method``)
METHODS = ("euler", "rk4")

# upstream's rounded 1 / sqrt(2 pi): the loss scale depends on this exact value
_LOGIT_NORMAL_SCALE = 0.398942


def logit_normal_weight(t: Tensor) -> Tensor:
    """Standard logit-normal density at ``t`` in (0, 1): ``[B] -> [B]``.

    ``0.398942 / (t (1 - t)) * exp(-log(t / (1 - t))^2 / 2)``, evaluated in
    upstream's operation order (``reflow/reflow.py``, ``reflow_loss``).
    """
    return _LOGIT_NORMAL_SCALE / t / (1 - t) * torch.exp(-0.5 * torch.log(t / (1 - t)) ** 2)


class RectifiedFlow(nn.Module):
    """Rectified-flow wrapper around a velocity network.

    ``velocity_fn(x [B, 1, M, T], step [B] = 1000 t, cond [B, M_cond, T]) -> [B, 1, M, T]``
    (:class:`~mlflow_ddsp.models.naive_v2_diff.NaiveV2Diff` in 6.0). At inference, a net
    with a ``prepare(cond)`` method gets ``prepare(cond)`` in place of ``cond`` at every step
    (computed once per sampling call; must give the same velocities).
    """

    def __init__(self, velocity_fn: nn.Module, out_dims: int = 128, spec_min: float = -12.0, spec_max: float = 2.0):
        """
        Args:
            velocity_fn: the velocity network (stored as ``velocity_fn``: state_dict prefix).
            out_dims: mel bins ``M``.
            spec_min: log-mel value mapped to -1 (upstream -12).
            spec_max: log-mel value mapped to +1 (upstream 2).

        Raises:
            ValueError: ``out_dims`` < 1 or ``spec_max <= spec_min``.
        """
        super().__init__()
        if isinstance(out_dims, bool) or not isinstance(out_dims, int) or out_dims < 1:
            raise ValueError(f"out_dims={out_dims!r}: must be a positive integer")
        if not spec_max > spec_min:
            raise ValueError(f"spec_max={spec_max} must be greater than spec_min={spec_min}")
        self.velocity_fn = velocity_fn
        self.out_dims = out_dims
        self.spec_min = spec_min
        self.spec_max = spec_max

    def norm_spec(self, x: Tensor) -> Tensor:
        """Log-mel -> [-1, 1] over [spec_min, spec_max] (linear, not clipped)."""
        return (x - self.spec_min) / (self.spec_max - self.spec_min) * 2 - 1

    def denorm_spec(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`norm_spec`."""
        return (x + 1) / 2 * (self.spec_max - self.spec_min) + self.spec_min

    def _velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.velocity_fn(x, 1000 * t, cond)

    def loss(self, x_1: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Logit-normal weighted L2 flow-matching loss (upstream ``reflow_loss``, ``l2_lognorm``).

        Args:
            x_1: ``[B, 1, M, T]`` normalised target mel.
            t: ``[B]`` times in (0, 1).
            cond: ``[B, M_cond, T]``.

        Returns:
            Scalar loss. Draws ``x_0`` with ``torch.randn_like(x_1)``.
        """
        # randn_like of upstream's transposed (non-contiguous) x_1: torch fills it with
        # other numbers than a contiguous randn of the same shape, so keep this exact call
        x_0 = torch.randn_like(x_1)
        x_t = x_0 + t[:, None, None, None] * (x_1 - x_0)
        v_pred = self._velocity(x_t, t, cond)
        squared = F.mse_loss(x_1 - x_0, v_pred, reduction="none")
        return torch.mean(logit_normal_weight(t)[:, None, None, None] * squared)

    def euler_step(self, x: Tensor, t: Tensor, dt: float, cond: Tensor) -> tuple[Tensor, Tensor]:
        """One explicit Euler step: ``(x + v(x, t) dt, t + dt)``."""
        x = x + self._velocity(x, t, cond) * dt
        return x, t + dt

    def rk4_step(self, x: Tensor, t: Tensor, dt: float, cond: Tensor) -> tuple[Tensor, Tensor]:
        """One classical Runge-Kutta step (network at ``t``, ``t + dt/2`` twice, ``t + dt``)."""
        k_1 = self._velocity(x, t, cond)
        k_2 = self._velocity(x + 0.5 * k_1 * dt, t + 0.5 * dt, cond)
        k_3 = self._velocity(x + 0.5 * k_2 * dt, t + 0.5 * dt, cond)
        k_4 = self._velocity(x + k_3 * dt, t + dt, cond)
        x = x + (k_1 + 2 * k_2 + 2 * k_3 + k_4) * dt / 6
        return x, t + dt

    def forward(
        self,
        condition: Tensor,
        gt_spec: Tensor | None = None,
        infer: bool = True,
        infer_step: int = 10,
        method: str = "euler",
        t_start: float = 0.0,
        use_tqdm: bool = False,
    ) -> Tensor:
        """Training loss or sampled mel.

        Args:
            condition: ``[B, T, M_cond]`` condition (6.0: the DDSP stage's log-mel).
            gt_spec: ``[B, T, M]`` log-mel: the training target, or at inference the
                starting mel blended with noise at ``t_start``. Inference without it
                starts from pure noise at t = 0 (upstream crashes on that path).
            infer: sample (True) or return the training loss (False).
            infer_step: ODE steps (``infer.infer_step``), >= 1.
            method: ``"euler"`` or ``"rk4"`` (``infer.method``).
            t_start: flow time to start from; below 0 it is taken as 0.
            use_tqdm: accepted for upstream's call form; no progress bar is shown.

        Returns:
            Training: scalar loss. Inference: ``[B, T, M]`` log-mel.

        Raises:
            ValueError: ``gt_spec`` missing in training, unknown ``method``, ``infer_step`` < 1.
        """
        cond = condition.transpose(1, 2)  # [B, M_cond, T]
        batch, device = condition.shape[0], condition.device
        t_start = max(float(t_start), 0.0)
        if not infer:
            if gt_spec is None:
                raise ValueError("training (infer=False) needs gt_spec [B, T, M]")
            x_1 = self.norm_spec(gt_spec).transpose(1, 2)[:, None, :, :]  # [B, 1, M, T]
            t = t_start + (1.0 - t_start) * torch.rand(batch, device=device)
            t = torch.clip(t, 1e-7, 1 - 1e-7)
            return self.loss(x_1, t, cond)

        if method not in METHODS:
            raise ValueError(f"Invalid value for infer.method={method!r}: must be one of {', '.join(METHODS)}")
        if isinstance(infer_step, bool) or not isinstance(infer_step, int) or infer_step < 1:
            raise ValueError(f"Invalid value for infer.infer_step={infer_step!r}: must be an integer >= 1")
        shape = (batch, 1, self.out_dims, cond.shape[2])
        if gt_spec is None:
            t_start = 0.0
            x = torch.randn(shape, device=device)
        else:
            start = self.norm_spec(gt_spec).transpose(1, 2)[:, None, :, :]
            x = t_start * start + (1 - t_start) * torch.randn(shape, device=device)
        t = torch.full((batch,), t_start, device=device)  # float32, accumulated as upstream
        dt = (1.0 - t_start) / infer_step
        step = self.euler_step if method == "euler" else self.rk4_step
        # the condition is the same at every step: a velocity net with ``prepare`` projects it once
        prepare = getattr(self.velocity_fn, "prepare", None)
        step_cond = prepare(cond) if callable(prepare) else cond
        for _ in range(infer_step):
            x, t = step(x, t, dt, step_cond)
        return self.denorm_spec(x.squeeze(1).transpose(1, 2))
