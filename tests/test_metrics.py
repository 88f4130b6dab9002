import torch

from langseg.metrics import SegmentationMetrics


def _logits(pred: torch.Tensor) -> torch.Tensor:
    return pred.float() * 20 - 10


def test_per_image_and_pooled_differ_as_documented():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1  # 8 pixels
    target[1, 0, 0, 0] = 1  # 1 pixel
    pred = target.clone()
    pred[1] = 0  # miss the small lesion entirely
    metric = SegmentationMetrics()
    metric.update(_logits(pred), target)
    out = metric.compute()
    assert torch.isclose(out["dice"], torch.tensor(0.5))  # (1 + 0) / 2
    assert torch.isclose(out["dice_pooled"], torch.tensor(16 / 17))  # 2*8 / (2*8 + 0 + 1)
    assert torch.isclose(out["miou_pooled"], torch.tensor(8 / 9))


def test_empty_mask_and_empty_prediction_score_one_and_false_positive_zero():
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    pred[1, 0, 0, 0] = 1
    metric = SegmentationMetrics()
    metric.update(_logits(pred), target)
    out = metric.compute()
    assert torch.isclose(out["dice"], torch.tensor(0.5))
    assert torch.isclose(out["miou"], torch.tensor(0.5))


def test_states_add_up_across_batches_like_one_pass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 8, 8, generator=g)
    target = (torch.rand(6, 1, 8, 8, generator=g) > 0.6).float()
    whole, parts = SegmentationMetrics(), SegmentationMetrics()
    whole.update(logits, target)
    parts.update(logits[:2], target[:2])
    parts.update(logits[2:], target[2:])
    for key, value in whole.compute().items():
        assert torch.isclose(value, parts.compute()[key]), key
