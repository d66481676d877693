import numpy as np
import pytest

from igcam_cli.metrics import average_precision, confusion, missing_confusion, scores


def test_confusion_and_miou_match_hand_computation() -> None:
    gt = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 255, 0]])
    conf = confusion(gt, pred, 3)
    # rows gt, columns pred 0..2, then uncertain, missing; the GT-255 pixel is dropped.
    assert conf.tolist() == [[2, 1, 0, 0, 0], [0, 2, 0, 1, 0], [1, 0, 0, 0, 0]]
    counted = scores(conf)
    # class 0: TP 2, FP 1 (gt 2 -> 0), FN 1 (-> 1): 2/4; class 1: TP 2, FP 1, FN 1 (the 255)
    # class 2: TP 0, FN 1: 0.  mIoU = (0.5 + 0.5 + 0) / 3
    assert counted.iou == pytest.approx([0.5, 0.5, 0.0])
    assert counted.miou == pytest.approx(1 / 3)
    assert counted.precision == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert counted.recall == pytest.approx([2 / 3, 2 / 3, 0.0])
    ignored = scores(conf, ignore_uncertain=True)
    assert ignored.iou == pytest.approx([0.5, 2 / 3, 0.0])


def test_missing_predictions_count_even_when_uncertain_pixels_are_ignored() -> None:
    gt = np.array([[0, 1, 255, 1]])
    conf = confusion(gt, gt, 2) + missing_confusion(gt, 2)
    for ignore in (False, True):
        assert scores(conf, ignore_uncertain=ignore).iou == pytest.approx([0.5, 0.5])


def test_miou_skips_classes_with_empty_union_but_counts_false_positives() -> None:
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 3, 1, 1]])
    result = scores(confusion(gt, pred, 4))
    # class 2 absent from both: excluded; class 3 only predicted: counted with IoU 0
    assert result.valid.tolist() == [True, True, False, True]
    assert result.miou == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_confusion_rejects_mismatched_shapes_and_unknown_gt_classes() -> None:
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError):
        confusion(np.full((2, 2), 5), np.zeros((2, 2)), 3)


def test_average_precision() -> None:
    scores_ = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    ap = average_precision(scores_, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert np.isnan(ap[1])
