"""Hessian-vector products and inverse-Hessian solvers for influence functions.

Influence (Koh and Liang 2017) needs ``H^-1 v`` for a Hessian ``H`` far too large to form.
Everything here works on a flat parameter vector and a loss closure, so the same solvers serve
the classifier head, the last backbone stage or the whole network:

- :func:`hvp` is forward-over-reverse differentiation with ``torch.func`` (one HVP costs
  about two backward passes and never materialises ``H``);
- :func:`conjugate_gradient` solves ``(H + damping I) x = b`` with a fixed Hessian;
- :func:`lissa` runs the stochastic LiSSA recursion, which tolerates a different mini-batch
  Hessian at every step;
- :func:`head_hessian_blocks` and :func:`solve_head` are the exact special case: for a bias-free
  linear layer under per-class binary cross-entropy the Hessian splits into one ``D x D`` block
  per class, ``mean_i s(1-s) f f^T``, small enough to factorise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]  # flat parameters -> scalar loss
Operator = Callable[[torch.Tensor], torch.Tensor]  # vector -> (approximate) H @ vector


def hvp(loss_fn: LossFn, theta: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``H(theta) @ vector`` for ``H`` the Hessian of ``loss_fn`` at ``theta``."""
    return torch.func.jvp(torch.func.grad(loss_fn), (theta,), (vector,))[1]


def damped(operator: Operator, damping: float) -> Operator:
    """``v -> (H + damping I) v``: damping makes a rank-deficient Hessian invertible."""
    return lambda v: operator(v) + damping * v


def conjugate_gradient(operator: Operator, b: torch.Tensor, iters: int = 100,
                       tol: float = 1e-6) -> torch.Tensor:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given as an operator.

    Stops after ``iters`` products or when the residual falls below ``tol * |b|``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r.dot(r)
    stop = (tol * b.norm()) ** 2
    for _ in range(iters):
        if rs <= stop:
            break
        ap = operator(p)
        alpha = rs / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        rs_next = r.dot(r)
        p = r + (rs_next / rs) * p
        rs = rs_next
    return x


def top_eigenvalue(operator: Operator, like: torch.Tensor, iters: int = 20,
                   seed: int = 0) -> float:
    """Largest eigenvalue of a positive semi-definite operator by power iteration."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    value = 0.0
    for _ in range(iters):
        w = operator(v)
        value = float(v.dot(w))
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return value


def lissa(operator: Operator, b: torch.Tensor, depth: int = 100,
          scale: float | None = None) -> torch.Tensor:
    """LiSSA estimate of ``A^-1 b``: ``x_j = b + x_{j-1} - A x_{j-1} / scale``, then ``x / scale``.

    The recursion is a Neumann series for ``(A / scale)^-1``; it converges when every eigenvalue
    of ``A / scale`` lies in (0, 2), so ``scale`` defaults to 1.05 times the largest eigenvalue
    (found by power iteration). ``operator`` may use a fresh mini-batch on every call, which is
    what makes LiSSA cheaper than conjugate gradient on large datasets.
    """
    if scale is None:
        scale = 1.05 * top_eigenvalue(operator, b)
    if scale <= 0:
        raise ValueError("lissa needs a positive definite operator (add damping)")
    x = b.clone()
    for _ in range(depth):
        x = b + x - operator(x) / scale
    return x / scale


def head_hessian_blocks(features: torch.Tensor, probs: torch.Tensor,
                        damping: float) -> torch.Tensor:
    """(C, D, D) per-class Hessians of the mean BCE loss of a bias-free linear head.

    ``features`` (N, D) are the pooled features, ``probs`` (N, C) the sigmoid outputs. The loss
    sum_c BCE(w_c . f, y_c) has no cross-class terms, so the Hessian is block diagonal and each
    block is ``mean_i s_ic (1 - s_ic) f_i f_i^T`` (plus ``damping`` on the diagonal).
    """
    n, dim = features.shape
    weights = probs * (1 - probs)  # (N, C)
    blocks = torch.einsum("nc,nd,ne->cde", weights, features, features) / n
    return blocks + damping * torch.eye(dim, dtype=blocks.dtype, device=blocks.device)


def solve_head(blocks: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``blocks[c]^-1 rhs[c]`` for (C, D, D) blocks and (C, D) or (C, D, K) right-hand sides."""
    factor = torch.linalg.cholesky(blocks)
    vector = rhs.dim() == 2
    solution = torch.cholesky_solve(rhs.unsqueeze(-1) if vector else rhs, factor)
    return solution.squeeze(-1) if vector else solution

