"""Hessian-vector products, inverse-HVP solvers and influence against exact references."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import igcam

from igcam_cli import hessian
from igcam_cli.artifacts import read_npz
from igcam_cli.steps.influence import InfluenceConfig, head_influence

F64 = torch.float64  # exact comparisons need double precision


def _tiny_net_loss() -> tuple[hessian.LossFn, torch.Tensor]:
    """A 2-layer tanh network's cross-entropy on random data: non-convex, with cross terms."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=gen, dtype=F64), torch.randint(0, 2, (20,), generator=gen)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        w1, w2 = theta[:12].view(4, 3), theta[12:].view(2, 4)
        return F.cross_entropy(torch.tanh(x @ w1.T) @ w2.T, y)

    return loss, torch.randn(20, generator=gen, dtype=F64)


def test_hvp_matches_the_explicit_hessian() -> None:
    loss, theta = _tiny_net_loss()
    explicit = torch.func.hessian(loss)(theta)
    for seed in range(3):
        v = torch.randn(20, generator=torch.Generator().manual_seed(seed), dtype=F64)
        torch.testing.assert_close(hessian.hvp(loss, theta, v), explicit @ v)


def test_cg_and_lissa_invert_the_damped_hessian() -> None:
    loss, theta = _tiny_net_loss()
    damping = 0.5  # makes the indefinite Hessian of the tanh net positive definite
    explicit = torch.func.hessian(loss)(theta) + damping * torch.eye(20, dtype=F64)
    assert torch.linalg.eigvalsh(explicit).min() > 0
    operator = hessian.damped(lambda v: hessian.hvp(loss, theta, v), damping)
    b = torch.linspace(-1, 1, 20, dtype=F64)
    expected = torch.linalg.solve(explicit, b)
    torch.testing.assert_close(hessian.conjugate_gradient(operator, b, iters=100, tol=1e-12),
                               expected)
    estimate = hessian.lissa(operator, b, depth=400)
    assert (estimate - expected).norm() / expected.norm() < 1e-3


def _logistic_problem(n: int = 200, dim: int = 4, classes: int = 2
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(n, dim, generator=gen, dtype=F64)
    truth = torch.randn(classes, dim, generator=gen, dtype=F64)
    chance = torch.sigmoid(features @ truth.T)
    targets = (torch.rand(n, classes, generator=gen, dtype=F64) < chance).double()
    return features, targets


def test_head_blocks_are_the_explicit_hessian_of_the_head_loss() -> None:
    features, targets = _logistic_problem()
    weight = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        logits = features @ theta.view(2, 4).T
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(features)

    explicit = torch.func.hessian(loss)(weight.flatten())
    blocks = hessian.head_hessian_blocks(features, torch.sigmoid(features @ weight.T), 0.0)
    torch.testing.assert_close(explicit[:4, :4], blocks[0])
    torch.testing.assert_close(explicit[4:, 4:], blocks[1])
    assert explicit[:4, 4:].abs().max() < 1e-12  # no cross-class terms: block diagonal


def _fit(features: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, damping: float,
         n_fit: int, bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Newton's method on (1/n_fit) sum_keep BCE + damping/2 |w|^2 (strictly convex).

    ``bias`` is a fixed logit offset per class (an FPN head's bias, not refitted).
    """
    weight = torch.zeros(targets.shape[1], features.shape[1], dtype=F64)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        logits = features[keep] @ theta.view_as(weight).T + bias
        bce = F.binary_cross_entropy_with_logits(logits, targets[keep], reduction="sum")
        return bce / n_fit + damping / 2 * theta.dot(theta)

    theta = weight.flatten()
    for _ in range(15):  # quadratic convergence: far below float64 noise by then
        step = torch.linalg.solve(torch.func.hessian(objective)(theta),
                                  torch.func.grad(objective)(theta))
        theta = theta - step
    return theta.view_as(weight)


@pytest.mark.parametrize(("solver", "with_bias"), [("exact", False), ("cg", False),
                                                   ("exact", True)])
def test_influence_predicts_leave_one_out_retraining(solver: str, with_bias: bool) -> None:
    """On a convex problem, -I(z)/n matches the held-out loss change of retraining without z."""
    features, targets = _logistic_problem()
    # a fixed per-class logit offset, as an FPN classifier's bias (ignoring it moves every score)
    bias = torch.tensor([-1.5, 0.8], dtype=F64) if with_bias else None
    offset = 0.0 if bias is None else bias
    damping = 0.05  # the damping is exactly an L2 penalty of the fitted objective here
    held = torch.zeros(len(features), dtype=torch.bool)
    held[::4] = True
    fit = ~held
    n_fit = int(fit.sum())
    weight = _fit(features, targets, fit, damping, n_fit, offset)

    def held_loss(w: torch.Tensor) -> float:
        logits = features[held] @ w.T + offset
        return float(F.binary_cross_entropy_with_logits(logits, targets[held], reduction="sum")
                     / int(held.sum()))

    config = InfluenceConfig(run=Path("."), dataset=None, solver=solver, damping=damping,
                             iters=200)
    _, scores, self_scores = head_influence(features, targets, weight, held, config, bias)
    predicted, actual = [], []
    for z in torch.nonzero(fit).flatten().tolist()[:24]:
        keep = fit.clone()
        keep[z] = False
        actual.append(held_loss(_fit(features, targets, keep, damping, n_fit, offset))
                      - held_loss(weight))
        predicted.append(-float(scores[z]) / n_fit)
    predicted, actual = np.array(predicted), np.array(actual)
    assert np.corrcoef(predicted, actual)[0, 1] > 0.99
    assert np.abs(predicted - actual).max() < 0.25 * np.abs(actual).max()  # first-order error
    assert self_scores is not None and (self_scores > 0).all()


def test_influence_step_writes_scores_maps_and_reuses_its_solution(
        own_run: Path, tiny_voc: Path) -> None:
    result = igcam("influence", "--run", own_run, "--voc", tiny_voc, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    folder = own_run / "influence"
    with (folder / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {r["role"] for r in rows} == {"fit", "held-out"}
    assert all(float(r["self_influence"]) > 0 for r in rows)
    maps = sorted((folder / "maps").glob("*.npz"))
    assert len(maps) == 24
    data = read_npz(maps[0])
    assert data["maps"].shape[1:] == (64, 64) and len(data["maps"]) == len(data["classes"])
    assert data["maps"].min() >= 0 and np.isclose(data["maps"].max(), 1, atol=1e-3)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["processed"] == 24
    again = igcam("influence", "--run", own_run, "--voc", tiny_voc, "--device", "cpu")
    assert again.returncode == 0 and "reusing" in again.stderr


@pytest.mark.slow
def test_network_influence_with_cg_runs_through_the_backbone(
        trained_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "influence-layer4"
    result = igcam("influence", "--run", trained_run, "--voc", tiny_voc, "--device", "cpu",
                   "--params", "layer4", "--solver", "cg", "--iters", "3",
                   "--hessian-images", "2", "--no-self-influence", "--out", out)
    assert result.returncode == 0, result.stderr
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and all(np.isfinite(float(r["influence"])) for r in rows)
    assert len(list((out / "maps").glob("*.npz"))) == 24


def test_exact_solver_refuses_network_parameters(trained_run: Path, tiny_voc: Path) -> None:
    result = igcam("influence", "--run", trained_run, "--voc", tiny_voc, "--params", "all")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --solver exact")
