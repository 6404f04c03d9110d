"""Several attributes with partial labels: schema, masked loss, sampling, face-to-head boxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headseg.attributes import (
    MISSING,
    AttributeSchema,
    FaceToHead,
    MultiAttributeHead,
    balanced_sample_weights,
    face_to_head_box,
    masked_attribute_loss,
)

SCHEMA = AttributeSchema.from_dict({
    "attributes": {"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]},
    "sources": {"hhw": {"helmet": "headwear/helmet", "head": "headwear/none"},
                "facemask": {"with_mask": "face_mask/with_mask", "without_mask": "face_mask/without_mask",
                             "mask_weared_incorrect": "face_mask/incorrect"}},
})


def test_schema_maps_each_source_category_to_one_attribute() -> None:
    assert SCHEMA.names == ["headwear", "face_mask"]
    assert SCHEMA.targets("hhw", "head") == [1, MISSING]
    assert SCHEMA.targets("facemask", "mask_weared_incorrect") == [MISSING, 2]
    assert AttributeSchema.from_dict(SCHEMA.to_dict()) == SCHEMA
    with pytest.raises(ValueError, match="maps to no attribute value"):
        SCHEMA.targets("hhw", "cap")
    with pytest.raises(ValueError, match="has \\['helmet', 'none'\\]"):
        AttributeSchema({"headwear": ("helmet", "none")}, {"s": {"cap": "headwear/cap"}})
    with pytest.raises(ValueError, match="two or more distinct values"):
        AttributeSchema({"headwear": ("helmet",)})


def test_masked_loss_equals_single_attribute_loss_when_all_labels_present() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    single = F.cross_entropy(logits, targets, label_smoothing=0.05)
    masked = masked_attribute_loss({"label": logits}, targets[:, None], label_smoothing=0.05)
    assert torch.allclose(masked, single)


def test_missing_labels_add_no_loss_and_no_gradient() -> None:
    torch.manual_seed(0)
    features = torch.randn(4, 8)
    head = MultiAttributeHead(8, SCHEMA, dropout=0.0)
    targets = torch.tensor([[0, MISSING], [1, MISSING], [MISSING, 2], [MISSING, 0]])
    logits = head(features)
    loss = masked_attribute_loss(logits, targets)
    expected = (F.cross_entropy(logits["headwear"][:2], targets[:2, 0])
                + F.cross_entropy(logits["face_mask"][2:], targets[2:, 1]))
    assert torch.allclose(loss, expected)

    # Rows 0-1 are hhw crops: the face_mask head must not have been pulled by them.
    grad_fm = torch.autograd.grad(masked_attribute_loss(head(features), targets),
                                  head.heads["face_mask"].weight)[0]
    only_labelled = torch.autograd.grad(
        F.cross_entropy(head(features)["face_mask"][2:], targets[2:, 1]), head.heads["face_mask"].weight)[0]
    assert torch.allclose(grad_fm, only_labelled)
    # And changing the logits of a missing label changes nothing.
    bumped = {k: v.detach().clone() for k, v in logits.items()}
    bumped["face_mask"][:2] += 100.0
    assert torch.allclose(masked_attribute_loss(bumped, targets), loss.detach())


def test_attribute_without_labels_in_batch_adds_zero_but_stays_in_graph() -> None:
    head = MultiAttributeHead(8, SCHEMA, dropout=0.0)
    logits = head(torch.randn(2, 8))
    loss = masked_attribute_loss(logits, torch.tensor([[0, MISSING], [1, MISSING]]))
    loss.backward()
    assert head.heads["face_mask"].weight.grad is not None
    assert torch.count_nonzero(head.heads["face_mask"].weight.grad) == 0


def test_balanced_weights_give_rare_values_equal_draws() -> None:
    # 6 helmets, 2 bare heads (hhw); 8 with_mask, 1 incorrect (facemask)
    targets = torch.tensor([[0, MISSING]] * 6 + [[1, MISSING]] * 2 + [[MISSING, 0]] * 8 + [[MISSING, 2]])
    w = balanced_sample_weights(targets)
    per_value = {"helmet": w[:6].sum(), "none": w[6:8].sum(), "with": w[8:16].sum(), "inc": w[16:].sum()}
    for total in per_value.values():
        assert total == pytest.approx(1.0)
    assert balanced_sample_weights(torch.tensor([[MISSING, MISSING]]))[0] == 0


def test_face_to_head_box_geometry() -> None:
    face = torch.tensor([[40.0, 50.0, 60.0, 80.0]])  # 20 wide, 30 tall
    head = face_to_head_box(face, FaceToHead(width=1.5, top=0.5, bottom=0.1))
    assert torch.allclose(head, torch.tensor([[35.0, 35.0, 65.0, 83.0]]))
    clipped = face_to_head_box(torch.tensor([[0.0, 5.0, 20.0, 35.0]]), image_size=(36, 100))
    assert clipped[0, 0] == 0 and clipped[0, 1] == 0 and clipped[0, 3] == 36
