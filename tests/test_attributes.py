"""Several attributes with partial labels: schema, masked loss, sampling, face-to-head boxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headseg.attributes import (
    MISSING,
    AttributeSchema,
    FaceToHead,
    attribute_class_weights,
    attribute_softmax,
    balanced_sample_weights,
    distillation_loss,
    face_to_head_box,
    fit_face_to_head,
    masked_attribute_loss,
    match_faces_to_heads,
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
    # Attribute order is column order: the same attributes listed the other way are another schema.
    swapped = AttributeSchema(dict(reversed(list(SCHEMA.attributes.items()))), SCHEMA.sources)
    assert swapped != SCHEMA and swapped.column_names != SCHEMA.column_names
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


def _rows(head: torch.nn.Linear, attribute: str) -> slice:
    """The rows of the shared Linear that make ``attribute``'s logits."""
    sizes = [len(v) for v in SCHEMA.attributes.values()]
    a = SCHEMA.names.index(attribute)
    return slice(sum(sizes[:a]), sum(sizes[:a + 1]))


def test_missing_labels_add_no_loss_and_no_gradient() -> None:
    torch.manual_seed(0)
    features = torch.randn(4, 8)
    head = torch.nn.Linear(8, len(SCHEMA.column_names))  # one Linear, rows grouped by attribute
    targets = torch.tensor([[0, MISSING], [1, MISSING], [MISSING, 2], [MISSING, 0]])
    logits = SCHEMA.split(head(features))
    loss = masked_attribute_loss(logits, targets)
    expected = (F.cross_entropy(logits["headwear"][:2], targets[:2, 0])
                + F.cross_entropy(logits["face_mask"][2:], targets[2:, 1]))
    assert torch.allclose(loss, expected)

    # Rows 0-1 are hhw crops: the face_mask rows of the head must not have been pulled by them.
    grad = torch.autograd.grad(masked_attribute_loss(SCHEMA.split(head(features)), targets), head.weight)[0]
    only_labelled = torch.autograd.grad(
        F.cross_entropy(SCHEMA.split(head(features))["face_mask"][2:], targets[2:, 1]), head.weight)[0]
    assert torch.allclose(grad[_rows(head, "face_mask")], only_labelled[_rows(head, "face_mask")])
    # The features of hhw crops get gradient from the headwear rows alone.
    x = features.clone().requires_grad_(True)
    masked_attribute_loss(SCHEMA.split(head(x)), targets).backward()
    hw = x.grad.clone()
    x.grad = None
    F.cross_entropy(SCHEMA.split(head(x))["headwear"][:2], targets[:2, 0]).backward()
    assert torch.allclose(hw[:2], x.grad[:2])
    # And changing the logits of a missing label changes nothing.
    bumped = {k: v.detach().clone() for k, v in logits.items()}
    bumped["face_mask"][:2] += 100.0
    assert torch.allclose(masked_attribute_loss(bumped, targets), loss.detach())


def test_masked_loss_gradient_equals_cross_entropy_with_every_label() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    want = torch.autograd.grad(F.cross_entropy(logits, targets, weight=weight, label_smoothing=0.1), logits)[0]
    got = torch.autograd.grad(masked_attribute_loss({"label": logits}, targets[:, None], 0.1,
                                                    {"label": weight}), logits)[0]
    assert torch.allclose(got, want)


def test_attribute_without_labels_in_batch_adds_zero_but_stays_in_graph() -> None:
    head = torch.nn.Linear(8, len(SCHEMA.column_names))
    logits = SCHEMA.split(head(torch.randn(2, 8)))
    loss = masked_attribute_loss(logits, torch.tensor([[0, MISSING], [1, MISSING]]))
    loss.backward()
    assert head.weight.grad is not None
    assert torch.count_nonzero(head.weight.grad[_rows(head, "face_mask")]) == 0


def test_columns_softmax_and_decoding() -> None:
    assert SCHEMA.column_names == ["headwear/helmet", "headwear/none", "face_mask/with_mask",
                                   "face_mask/without_mask", "face_mask/incorrect"]
    single = AttributeSchema.single(["a", "b", "c"])
    assert single.column_names == ["a", "b", "c"] and single.targets("crops", "b") == [1]
    logits = torch.tensor([[2.0, 0.0, 0.0, 3.0, 0.0]])
    probs = attribute_softmax(logits, SCHEMA)
    assert torch.allclose(probs[:, :2].sum(1), torch.ones(1)) and torch.allclose(probs[:, 2:].sum(1), torch.ones(1))
    assert torch.allclose(attribute_softmax(logits[:, :3], single), F.softmax(logits[:, :3], 1))
    (row,) = SCHEMA.decode(probs)
    assert row["headwear"].value == "helmet" and row["face_mask"].value == "without_mask"
    assert row["face_mask"].prob == pytest.approx(float(probs[0, 3]))
    assert sum(row["face_mask"].probs.values()) == pytest.approx(1.0)
    assert SCHEMA.columns_of("facemask")["mask_weared_incorrect"] == "face_mask/incorrect"
    assert SCHEMA.source_of(["helmet", "head"]) == "hhw"
    with pytest.raises(ValueError, match="fit 0 sources"):
        SCHEMA.source_of(["cap"])
    with pytest.raises(ValueError, match="5 values in all"):
        SCHEMA.split(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="wrong shape"):
        AttributeSchema.from_dict({"attributes": ["helmet", "none"]})


def test_distillation_loss_is_kl_to_the_teacher_times_t_squared() -> None:
    torch.manual_seed(0)
    student = SCHEMA.split(torch.randn(4, len(SCHEMA.column_names), requires_grad=True))
    teacher = SCHEMA.split(torch.randn(4, len(SCHEMA.column_names)))
    for t in (1.0, 3.0):
        want = sum(F.kl_div(F.log_softmax(student[a] / t, -1), F.softmax(teacher[a] / t, -1),
                            reduction="batchmean") * t * t for a in SCHEMA.names)
        assert torch.allclose(distillation_loss(student, teacher, temperature=t), want)
    # A teacher's log-probabilities teach as its logits do (softmax drops the per-row shift).
    log_probs = {a: F.log_softmax(v, -1) for a, v in teacher.items()}
    assert torch.allclose(distillation_loss(student, log_probs), distillation_loss(student, teacher))
    # Nothing to learn from oneself; at T = 1 the gradient is (model - teacher probabilities) / N.
    same = {a: v.detach() for a, v in student.items()}
    assert distillation_loss(student, same).abs() < 1e-6
    grad = torch.autograd.grad(distillation_loss(student, teacher), student["face_mask"])[0]
    assert torch.allclose(grad, (F.softmax(student["face_mask"], -1) - F.softmax(teacher["face_mask"], -1)) / 4,
                          atol=1e-6)


def test_distillation_with_labels_skips_the_attributes_a_source_does_not_label() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, len(SCHEMA.column_names))
    features = torch.randn(4, 8)
    teacher = SCHEMA.split(torch.randn(4, len(SCHEMA.column_names)))
    targets = torch.tensor([[0, MISSING], [1, MISSING], [MISSING, 2], [MISSING, 0]])
    student = SCHEMA.split(head(features))
    want = (F.kl_div(F.log_softmax(student["headwear"][:2], -1), F.softmax(teacher["headwear"][:2], -1),
                     reduction="batchmean")
            + F.kl_div(F.log_softmax(student["face_mask"][2:], -1), F.softmax(teacher["face_mask"][2:], -1),
                       reduction="batchmean"))
    assert torch.allclose(distillation_loss(student, teacher, targets), want)
    # hhw crops (rows 0-1) give the face_mask rows of the head no gradient; without targets they do.
    rows = _rows(head, "face_mask")
    grad = torch.autograd.grad(distillation_loss(SCHEMA.split(head(features[:2])), SCHEMA.split(
        torch.randn(2, 5)), targets[:2]), head.weight)[0]
    assert torch.count_nonzero(grad[rows]) == 0
    grad = torch.autograd.grad(distillation_loss(SCHEMA.split(head(features[:2])), SCHEMA.split(
        torch.randn(2, 5))), head.weight)[0]
    assert torch.count_nonzero(grad[rows]) > 0
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, temperature=0.0)


def test_distillation_from_a_teacher_that_knows_fewer_values() -> None:
    # The model added face_mask/not_visible (column 3); the teacher knows the first three values.
    torch.manual_seed(0)
    model = AttributeSchema({"headwear": ("helmet", "none"),
                             "face_mask": ("with_mask", "without_mask", "incorrect", "not_visible")})
    student = model.split(torch.randn(4, 6, requires_grad=True))
    teacher = SCHEMA.split(torch.randn(4, 5))
    columns = {"face_mask": [0, 1, 2]}
    want = sum(F.kl_div(F.log_softmax(s, -1), F.softmax(teacher[a], -1), reduction="batchmean")
               for a, s in (("headwear", student["headwear"]), ("face_mask", student["face_mask"][:, :3])))
    assert torch.allclose(distillation_loss(student, teacher, columns=columns), want)
    # not_visible's logit gets no gradient from the teacher: the conditional distribution ignores it
    grad = torch.autograd.grad(distillation_loss(student, teacher, columns=columns), student["face_mask"])[0]
    assert torch.count_nonzero(grad[:, 3]) == 0 and torch.count_nonzero(grad[:, :3]) > 0


def test_class_weights_per_attribute() -> None:
    targets = torch.tensor([[0, MISSING]] * 3 + [[1, MISSING]] + [[MISSING, 0]] * 2)
    w = attribute_class_weights(targets, SCHEMA)
    assert torch.allclose(w["headwear"], torch.tensor([4 / 6, 4 / 2]))
    assert torch.allclose(w["face_mask"], torch.tensor([1.0, 0.0, 0.0]))  # absent values weigh 0


def test_balanced_weights_give_rare_values_equal_draws() -> None:
    # 6 helmets, 2 bare heads (hhw); 8 with_mask, 1 incorrect (facemask)
    targets = torch.tensor([[0, MISSING]] * 6 + [[1, MISSING]] * 2 + [[MISSING, 0]] * 8 + [[MISSING, 2]])
    w = balanced_sample_weights(targets)
    per_value = {"helmet": w[:6].sum(), "none": w[6:8].sum(), "with": w[8:16].sum(), "inc": w[16:].sum()}
    for total in per_value.values():
        assert total == pytest.approx(1.0)
    assert balanced_sample_weights(torch.tensor([[MISSING, MISSING]]))[0] == 0


def test_balance_power_tempers_the_rare_values_draws() -> None:
    # face_mask: 16 with_mask, 4 without, 1 incorrect; headwear: 2 helmets, 2 bare heads
    targets = torch.tensor([[MISSING, 0]] * 16 + [[MISSING, 1]] * 4 + [[MISSING, 2]] + [[0, MISSING]] * 2
                           + [[1, MISSING]] * 2)
    values = {"with": slice(0, 16), "without": slice(16, 20), "inc": slice(20, 21)}
    assert torch.equal(balanced_sample_weights(targets, power=1.0), balanced_sample_weights(targets))
    sqrt = balanced_sample_weights(targets, power=0.5)
    share = {k: float(sqrt[v].sum()) for k, v in values.items()}  # counts^0.5: 4 : 2 : 1
    assert share["with"] / share["inc"] == pytest.approx(4) and share["without"] / share["inc"] == pytest.approx(2)
    assert sum(share.values()) == pytest.approx(3.0)  # each attribute's draws are unmoved
    assert float(sqrt[21:].sum()) == pytest.approx(2.0)
    natural = balanced_sample_weights(targets, power=0.0)  # as the crops come: one weight per crop
    assert torch.allclose(natural[:21], torch.full((21,), 3 / 21, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        balanced_sample_weights(targets, power=1.5)


def test_value_weights_move_draws_within_an_attribute_only() -> None:
    # face_mask: 8 with_mask, 2 without, 1 not_visible-like fourth value ... weighted 0.5; headwear: 3 / 3
    targets = torch.tensor([[MISSING, 0]] * 8 + [[MISSING, 1]] * 2 + [[MISSING, 2]] * 4 + [[0, MISSING]] * 3
                           + [[1, MISSING]] * 3)
    w = balanced_sample_weights(targets, value_weights=[None, [1.0, 1.0, 0.5]])
    share = [float(w[s].sum()) for s in (slice(0, 8), slice(8, 10), slice(10, 14))]
    assert share == pytest.approx([3 / 2.5, 3 / 2.5, 1.5 / 2.5])  # 1 : 1 : 0.5 of face_mask's 3
    assert torch.allclose(w[10:14], torch.full((4,), 1.5 / 2.5 / 4, dtype=torch.float64))  # alike within
    assert torch.equal(w[14:], balanced_sample_weights(targets)[14:])  # headwear unmoved
    assert torch.equal(balanced_sample_weights(targets, value_weights=[None, [1.0] * 3]), balanced_sample_weights(targets))
    sqrt = balanced_sample_weights(targets, power=0.5, value_weights=[None, [1.0, 1.0, 0.5]])
    assert float(sqrt[:8].sum()) / float(sqrt[10:14].sum()) == pytest.approx((8 ** 0.5) / (0.5 * 4 ** 0.5))
    assert float(sqrt[:14].sum()) == pytest.approx(3.0)
    for bad in ([None], [None, [1.0, 0.0, 1.0]], [None, [1.0, 1.0]]):
        with pytest.raises(ValueError, match="one positive weight per value"):
            balanced_sample_weights(targets, value_weights=bad)


def test_crop_weights_move_draws_within_a_value_only() -> None:
    # `none` from 3 hhw crops and 1 weakly labelled street crop weighted 3: half the draws each
    targets = torch.tensor([[0, MISSING]] * 2 + [[1, MISSING]] * 4 + [[MISSING, 1]])
    crop_weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0])
    w = balanced_sample_weights(targets, crop_weights)
    assert w[2:5].sum() == pytest.approx(0.5) and w[5] == pytest.approx(0.5)
    assert w[:2].sum() == pytest.approx(1.0) and w[6] == pytest.approx(1.0)  # other values unmoved
    assert torch.allclose(balanced_sample_weights(targets, torch.ones(7)), balanced_sample_weights(targets))
    with pytest.raises(ValueError, match="one positive weight per crop"):
        balanced_sample_weights(targets, torch.zeros(7))


def test_attribute_weights_move_draws_between_attributes_only() -> None:
    # headwear: 2 helmets, 1 bare head; face_mask: 3 with_mask, 1 incorrect
    targets = torch.tensor([[0, MISSING]] * 2 + [[1, MISSING]] + [[MISSING, 0]] * 3 + [[MISSING, 2]])
    base, w = balanced_sample_weights(targets), balanced_sample_weights(targets, attribute_weights=[1.0, 3.0])
    assert w[:3].sum() == pytest.approx(2.0) and w[3:].sum() == pytest.approx(6.0)  # face_mask: 2 values x 3
    assert torch.allclose(w[:3], base[:3]) and torch.allclose(w[3:], 3 * base[3:])
    assert w[3:6].sum() == pytest.approx(w[6])  # values within face_mask still drawn equally
    assert torch.allclose(balanced_sample_weights(targets, attribute_weights=[1.0, 1.0]), base)
    for bad in ([1.0], [1.0, 0.0]):
        with pytest.raises(ValueError, match="one positive weight per attribute"):
            balanced_sample_weights(targets, attribute_weights=bad)


def test_face_to_head_box_geometry() -> None:
    face = torch.tensor([[40.0, 50.0, 60.0, 80.0]])  # 20 wide, 30 tall
    head = face_to_head_box(face, FaceToHead(width=1.5, top=0.5, bottom=0.1))
    assert torch.allclose(head, torch.tensor([[35.0, 35.0, 65.0, 83.0]]))
    clipped = face_to_head_box(torch.tensor([[0.0, 5.0, 20.0, 35.0]]), image_size=(36, 100))
    assert clipped[0, 0] == 0 and clipped[0, 1] == 0 and clipped[0, 3] == 36


def test_faces_pair_with_the_smallest_head_holding_them_and_the_rule_fits_back() -> None:
    rule = FaceToHead(width=1.4, top=0.6, bottom=0.1)
    faces = torch.tensor([[40.0, 50.0, 60.0, 80.0], [140.0, 20.0, 170.0, 60.0], [300.0, 300.0, 310.0, 310.0]])
    heads = face_to_head_box(faces[:2], rule)
    group = torch.tensor([[0.0, 0.0, 200.0, 120.0]])  # holds both faces, but is no one's head
    heads = torch.cat([group, heads.flip(0)])
    pairs = match_faces_to_heads(faces, heads)
    assert sorted(pairs) == [(0, 2), (1, 1)]  # the third face has no head
    fitted = fit_face_to_head(faces[[0, 1]], heads[[2, 1]])
    assert (fitted.width, fitted.top, fitted.bottom) == (1.4, 0.6, 0.1)
    # a head that covers too little of a face is not its head; no pairs, no rule
    assert match_faces_to_heads(faces[:1], torch.tensor([[40.0, 50.0, 60.0, 60.0]])) == []
    with pytest.raises(ValueError, match="no .face, head. pairs"):
        fit_face_to_head(faces[:0], heads[:0])
