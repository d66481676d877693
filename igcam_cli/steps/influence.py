"""``igcam influence``: how much each training image, and each place in it, helps the classifier.

Influence functions (Koh and Liang 2017): upweighting a training sample z changes a loss L by
``I(z) = -grad L^T H^-1 grad l(z)``, H the Hessian of the training loss. Here L is the loss on a
held-out share of the training images (chosen by a hash of the image id, so it is stable when
the dataset grows) and H is taken over the rest. Outputs in ``RUN/influence/``:

- ``scores.csv``: per training image its influence on the held-out loss (positive = upweighting
  it would *raise* that loss, a harmful sample) and its self-influence ``grad l^T H^-1 grad l``
  (large for atypical or mislabelled images). Stage-2 training re-weights the loss with it.
- ``maps/<id>.npz``: per labelled class, the spatial influence map: how much each location
  moves the image's influence score, i.e. the magnitude of the gradient of that score with
  respect to the feature map times the features (each location's first-order share), upsampled
  to the image and divided by its maximum. Its sign carries no localisation on real photos
  (measured: AUC against the object masks 0.47 signed vs 0.68 for the magnitude), so the
  magnitude is what is stored. The instance-guided CAM weights proposals by it.
- ``solution.pt``: the inverse-HVP vector ``H^-1 grad L`` (reused by reruns and shards).

``--params head`` (the default) restricts H to the 1x1 classifier, whose Hessian splits into one
D x D block per class and is inverted exactly. ``layer4`` adds the last backbone stage and
``all`` every trainable weight; their inverse-HVP comes from conjugate gradient or LiSSA over
``torch.func`` Hessian-vector products, which costs minutes to hours on a CPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from igcam_cli import distributed, hessian, options
from igcam_cli.artifacts import (
    RunDir,
    ensure_dir,
    fingerprint,
    read_torch,
    remove_stale_temps,
    sha256_file,
    write_influence_map,
    write_scores,
    write_torch,
)
from igcam_cli.datasets import Sample, load_dataset, multi_hot
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_image
from igcam_cli.models import CamNet, check_classes, load_classifier
from igcam_cli.options import MAX_SIDE, option
from igcam_cli.runner import (
    ClassifierStepConfig,
    ImageStep,
    ImageWork,
    console,
    readable,
    record_problems,
    resolve_device,
    track,
)
from igcam_cli.transforms import normalise, resize, scaled_size, to_tensor

PARAM_SETS = ("head", "layer4", "all")
SOLVERS = ("exact", "cg", "lissa")


@dataclass
class InfluenceConfig(ClassifierStepConfig):
    out: Path | None = options.out("RUN/influence")
    params: str = option(
        "head", "Parameters the Hessian covers: head (1x1 classifier, exact and fast), layer4 "
                "(last backbone stage + head) or all (every trainable weight).", choices=PARAM_SETS)
    solver: str = option(
        "exact", "Inverse-Hessian-vector product: exact (head only), cg (conjugate gradient on "
                 "a fixed Hessian sample) or lissa (stochastic recursion).", choices=SOLVERS)
    damping: float = option(
        0.01, "Added to the Hessian's diagonal; makes a few images' Hessian invertible.",
        above=0)
    holdout: float = option(
        0.2, "Share of the images (by a hash of the id) whose loss the influence is measured "
             "on; the Hessian uses the rest.", above=0, below=1)
    iters: int = option(100, "CG iterations or LiSSA depth.", min=1)
    hessian_images: int = option(8, "Images per Hessian-vector product (layer4/all).", min=1)
    size: int = option(448, "Long side images are shrunk to for layer4/all.", min=32,
                       max=MAX_SIDE)
    self_influence: bool = option(
        True, "Also compute each image's self-influence (one inverse-HVP per image unless "
              "--solver exact).")
    maps: bool = option(
        True, "Write per-image spatial influence maps (used by cam --method igcam).")
    seed: int = option(0, "Seed for the Hessian samples.")
    device: str = options.device()
    io_workers: int = options.io_workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()
    wait: bool = options.wait()


def is_held_out(image_id: str, fraction: float) -> bool:
    """Deterministic membership of the held-out share, independent of the other images."""
    digest = hashlib.sha1(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def selected_parameters(model: CamNet, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters H is taken over: the head, the last backbone stage + head, or all."""
    if which not in PARAM_SETS:
        raise IgcamError(f"--params must be one of {', '.join(PARAM_SETS)}, got {which!r}")
    frozen = {id(p) for p in model.backbone.frozen_parameters()}
    if which == "head":
        chosen = {id(model.classifier.weight)}
    elif which == "layer4":
        chosen = {id(p) for p in model.backbone.last_stage_parameters()}
        chosen.add(id(model.classifier.weight))
    else:
        chosen = {id(p) for p in model.parameters() if id(p) not in frozen}
    return [(name, p) for name, p in model.named_parameters() if id(p) in chosen]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(theta: torch.Tensor, named: list[tuple[str, torch.nn.Parameter]]
               ) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, p in named:
        out[name] = theta[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def sample_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The per-sample training loss H is the Hessian of: BCE summed over classes."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def _small_image(sample: Sample, size: int, device: torch.device) -> torch.Tensor:
    """(1, 3, h, w) image shrunk to a long side of at most ``size`` (layer4 / all solvers)."""
    image = to_tensor(read_image(sample.image))
    _, height, width = image.shape
    scale = min(1.0, size / max(height, width))
    return resize(image[None], scaled_size(height, width, scale)).to(device)


@dataclass
class Solution:
    """``vector = (H + damping I)^-1 grad L`` over the named parameters, plus per-sample scores."""

    names: list[str]
    vector: torch.Tensor
    ids: list[str]
    held_out: list[bool]
    influence: np.ndarray
    self_influence: np.ndarray | None


def _solve_head(model: CamNet, samples: list[Sample], held: list[bool], config: InfluenceConfig,
                device: torch.device) -> Solution:
    """Head-only influence from the pooled full-image features of every sample."""
    feats, targets = [], []
    num_classes = model.classifier.weight.shape[0]
    with torch.inference_mode():
        for sample in track(samples, len(samples), "influence: features"):
            image = to_tensor(read_image(sample.image)).to(device)[None]
            feats.append(model.features(image).mean(dim=(2, 3))[0].double().cpu())
            targets.append(multi_hot(sample.labels, num_classes).double())
    weight = model.classifier.weight.detach().flatten(1).double().cpu()
    bias = model.classifier.bias
    vector, scores, self_scores = head_influence(
        torch.stack(feats), torch.stack(targets), weight, torch.tensor(held), config,
        None if bias is None else bias.detach().double().cpu())
    return Solution(["classifier.weight"], vector.float().flatten(), [s.id for s in samples],
                    held, scores.numpy(), None if self_scores is None else self_scores.numpy())


def head_influence(features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                   held: torch.Tensor, config: InfluenceConfig, bias: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Influence through a linear head's weights under per-class BCE.

    ``features`` (N, D) pooled features, ``targets`` (N, C), ``weight`` (C, D), ``held`` (N,)
    marks the held-out samples; ``bias`` (C,), of a biased head (FPN, --head-bias), is held
    fixed (it only shifts the logits the Hessian is taken at). Returns
    ``v = (H + damping I)^-1 grad L_held`` (C, D), every sample's influence ``-v . grad l(z)``
    and, if asked, its self-influence. The gradient of sample n for row c is
    ``(s_nc - y_nc) f_n``, so nothing of size N x C x D is formed.
    """
    offset = 0.0 if bias is None else bias
    probs = torch.sigmoid(features @ weight.T + offset)
    residual = probs - targets
    fit = ~held
    g = (residual[held].T @ features[held]) / int(held.sum())  # (C, D) held-out gradient
    if config.solver == "exact":
        blocks = hessian.head_hessian_blocks(features[fit], probs[fit], config.damping)
        vector = hessian.solve_head(blocks, g)

        def quadratic() -> torch.Tensor:  # (N, C): f_n^T H_c^-1 f_n, in chunks to bound memory
            parts = []
            for chunk in features.split(1024):
                rhs = chunk.T.expand(len(blocks), -1, -1)
                parts.append((hessian.solve_head(blocks, rhs) * rhs).sum(1).T)
            return torch.cat(parts)
    else:
        def loss(theta: torch.Tensor) -> torch.Tensor:
            logits = features[fit] @ theta.view_as(weight).T + offset
            return F.binary_cross_entropy_with_logits(logits, targets[fit], reduction="sum") \
                / int(fit.sum())

        operator = hessian.damped(lambda v: hessian.hvp(loss, weight.flatten(), v),
                                  config.damping)
        solve = _iterative(config, operator)
        vector = solve(g.flatten()).view_as(weight)

        def quadratic() -> torch.Tensor:  # one inverse-HVP per sample, all class blocks at once
            rows = [(solve(f.expand_as(weight).flatten()).view_as(weight) * f).sum(1)
                    for f in track(features, len(features), "influence: self")]
            return torch.stack(rows)
    scores = -(residual * (features @ vector.T)).sum(1)
    self_scores = (residual ** 2 * quadratic()).sum(1) if config.self_influence else None
    return vector, scores, self_scores


def _iterative(config: InfluenceConfig, operator: hessian.Operator
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    if config.solver == "cg":
        return lambda b: hessian.conjugate_gradient(operator, b, iters=config.iters)
    return lambda b: hessian.lissa(operator, b, depth=config.iters)


def _solve_network(model: CamNet, samples: list[Sample], held: list[bool],
                   config: InfluenceConfig, device: torch.device) -> Solution:
    """layer4 / all: gradients by autograd, inverse-HVP by CG or LiSSA over torch.func HVPs."""
    named = selected_parameters(model, config.params)
    theta = _flat([p.detach() for _, p in named])
    num_classes = model.classifier.weight.shape[0]
    def inputs(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        return (_small_image(sample, config.size, device),
                multi_hot(sample.labels, num_classes).to(device))

    def grad_of(sample: Sample) -> torch.Tensor:
        image, target = inputs(sample)
        loss = sample_loss(model(image)[0], target)
        return _flat(list(torch.autograd.grad(loss, [p for _, p in named])))

    fit = [s for s, h in zip(samples, held, strict=True) if not h]
    held_samples = [s for s, h in zip(samples, held, strict=True) if h]
    g = torch.stack([grad_of(s) for s in track(held_samples, len(held_samples),
                                               "influence: held-out gradient")]).mean(0)
    rng = np.random.default_rng(config.seed)
    # CG needs one fixed Hessian sample, decoded once; LiSSA draws a fresh one at every step.
    fixed = [inputs(fit[i]) for i in rng.permutation(len(fit))[:config.hessian_images]]

    def operator(v: torch.Tensor) -> torch.Tensor:
        batch = fixed if config.solver == "cg" else [
            inputs(fit[i]) for i in rng.choice(len(fit), min(config.hessian_images, len(fit)),
                                               replace=False)]
        total = torch.zeros_like(v)
        for image, target in batch:

            def loss(t: torch.Tensor, image: torch.Tensor = image,
                     target: torch.Tensor = target) -> torch.Tensor:
                logits = torch.func.functional_call(model, _unflatten(t, named), (image,))
                return sample_loss(logits[0], target)

            total += hessian.hvp(loss, theta, v).detach()  # frozen weights still track grads
        return total / len(batch) + config.damping * v

    solve = _iterative(config, operator)
    console.print(f"influence: {config.solver} over {theta.numel():,} parameters "
                  f"({config.params}), {config.iters} steps")
    vector = solve(g)
    influence, self_values = [], []
    for sample in track(samples, len(samples), "influence: per-sample"):
        grad = grad_of(sample)
        influence.append(float(-vector.dot(grad)))
        if config.self_influence:
            self_values.append(float(grad.dot(solve(grad))))
    return Solution([name for name, _ in named], vector.cpu(), [s.id for s in samples], held,
                    np.array(influence), np.array(self_values) if config.self_influence else None)


def _solution_key(config: InfluenceConfig, checkpoint: Path, samples: list[Sample]) -> str:
    return fingerprint([sha256_file(checkpoint), config.params, config.solver,
                        repr(config.damping), repr(config.holdout), str(config.iters),
                        str(config.hessian_images), str(config.size), str(config.seed),
                        str(config.self_influence), *(s.id for s in samples)])


def spatial_map(model: CamNet, named: list[tuple[str, torch.nn.Parameter]], vector: torch.Tensor,
                image: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """(K, h, w) how much each feature location moves the influence score, per labelled class.

    For class c the influence score is ``s_c = -v . grad_theta l_c`` (l_c the BCE of class c).
    Its gradient with respect to the feature map, times the features and summed over channels,
    is each location's first-order share of the score; its magnitude is returned.
    """
    params = [p for _, p in named]
    head_only = len(params) == 1 and params[0] is model.classifier.weight
    with torch.set_grad_enabled(not head_only):
        features = model.features(image)
    if head_only:
        features = features.detach().requires_grad_()
    logits = model.logits(features)[0]
    vector = vector.to(features.device)
    maps = []
    for c in classes:
        loss = F.binary_cross_entropy_with_logits(logits[c], torch.ones_like(logits[c]))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        score = -vector.dot(_flat(list(grads)))
        (dscore,) = torch.autograd.grad(score, features, retain_graph=True)
        maps.append((dscore * features).sum(dim=1)[0].detach().abs())
    return torch.stack(maps)


def influence(config: InfluenceConfig) -> Path:
    """Solve for the influence vector once, score every training image, write per-image maps."""
    options.check(config)
    if config.solver == "exact" and config.params != "head":
        raise IgcamError("--solver exact inverts the head's Hessian only; use --solver cg or "
                         "lissa with --params layer4|all")
    shard = distributed.shard(config.shard)
    checkpoint = config.classifier()
    device = resolve_device(config.device)
    model, payload = load_classifier(checkpoint, device)
    named = selected_parameters(model, config.params)
    step = ImageStep("influence", config.out or RunDir(config.run).step("influence"), config,
                     shard, config.wait)
    out, record = step.out, step.record
    dataset = load_dataset(config.dataset, strict=config.strict)
    check_classes(payload, dataset.class_names, checkpoint)
    record_problems(record, dataset.problems)
    # Decoded once here, so an unreadable image is warned about and left out of the Hessian,
    # the scores and the maps, instead of stopping the solver halfway.
    samples = [sample for sample, _ in readable(dataset.labelled(), record, config.strict)]
    if not samples:
        raise IgcamError("influence needs images with labels; none found in the dataset")
    record.inputs = {"dataset": config.dataset.describe(), "checkpoint": str(checkpoint),
                     "checkpoint_sha256": sha256_file(checkpoint),
                     "images_fingerprint": fingerprint(s.id for s in samples)}
    step.check_recipe(config.overwrite)  # before the solution or any map is rewritten
    key = _solution_key(config, checkpoint, samples)
    solution_path = RunDir.influence_solution(out)
    stored = read_torch(solution_path, "influence solution") if solution_path.is_file() else None
    if stored is not None and stored.get("key") == key and not config.overwrite:
        vector = stored["vector"]
        console.print(f"influence: reusing {solution_path}")
    else:
        held = [is_held_out(s.id, config.holdout) for s in samples]
        if all(held) or not any(held):
            raise IgcamError("influence needs images on both sides of --holdout; change the "
                             "fraction or add images")
        solve = _solve_head if config.params == "head" else _solve_network
        solution = solve(model, samples, held, config, device)
        write_scores(RunDir.influence_scores(out), zip(
            solution.ids, ("held-out" if h else "fit" for h in solution.held_out),
            solution.influence.tolist(),
            [None] * len(solution.ids) if solution.self_influence is None
            else solution.self_influence.tolist(), strict=True))
        vector = solution.vector
        write_torch(solution_path, {"key": key, "names": solution.names, "vector": vector,
                                    "damping": config.damping})
        record.extra.update(held_out=int(sum(held)), fit=len(held) - int(sum(held)))
    console.print(f"influence: {len(samples)} images scored ({config.params}, {config.solver}) "
                  f"-> {out}")
    if config.maps:
        maps_dir = ensure_dir(RunDir.influence_maps(out))
        remove_stale_temps(maps_dir)

        def load(sample: Sample) -> torch.Tensor:
            return to_tensor(read_image(sample.image))

        def maps_of(sample: Sample, image: torch.Tensor) -> np.ndarray:
            image = image.to(device)
            maps = spatial_map(model, named, vector, image[None], list(sample.labels or ()))
            maps = resize(maps[None].float(), tuple(image.shape[1:]))[0]
            # A floor far below CAMs' 1e-5: influence magnitudes can be that small everywhere.
            return normalise(maps, floor=1e-12).to(torch.float16).cpu().numpy()

        def save(sample: Sample, maps: np.ndarray) -> None:
            write_influence_map(RunDir.image_maps(maps_dir, sample.id),
                                list(sample.labels or ()), maps)

        step.run(step.select(samples), ImageWork(load, maps_of, save),
                 lambda s: RunDir.image_maps(maps_dir, s.id), overwrite=config.overwrite,
                 strict=config.strict, io_workers=config.io_workers,
                 description="influence: maps")
    return step.finish("maps written")
