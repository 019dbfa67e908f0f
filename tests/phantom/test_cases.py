"""The phantom generator: reproducible, boxes match the pixels drawn, answers follow the conventions."""

import dataclasses

import numpy as np
import pytest

from phantom import sample
from phantom.cases import render
from phantom.training.data import footprint


def _changed_box(a, b):
    diff = np.any(np.asarray(a) != np.asarray(b), axis=-1)
    ys, xs = np.nonzero(diff)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inside(inner, outer):
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _intersects(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_same_seed_same_cases_and_prefixes_agree():
    first, again, longer = sample(6, 7), sample(6, 7), sample(9, 7)
    for a, b, c in zip(first, again, longer, strict=False):
        assert a.image.tobytes() == b.image.tobytes() == c.image.tobytes()
        assert (a.question, a.answer, a.lesion_box, a.objects) == (
            c.question,
            c.answer,
            c.lesion_box,
            c.objects,
        )
    other = sample(6, 8)
    assert [a.image.tobytes() for a in first] != [b.image.tobytes() for b in other]


def test_object_boxes_bound_exactly_the_pixels_each_object_changed():
    checked = 0
    for case in sample(40, 3, distractor_prob=0.8):
        for i, obj in enumerate(case.objects):
            without = dataclasses.replace(case.scene, objects=case.objects[:i] + case.objects[i + 1 :])
            changed = _changed_box(case.image, render(without))
            assert changed is not None, f"case {case.index}: {obj.kind} changed no pixel"
            if any(_intersects(obj.box, o.box) for o in case.scene.overlays):
                assert _inside(changed, obj.box)  # a burned-in overlay may cover part of it
            else:
                assert changed == obj.box, f"case {case.index}: {obj.kind} box {obj.box} drew {changed}"
                checked += 1
    assert checked >= 40


def test_marker_box_bounds_the_tag_pixels():
    for case in sample(10, 4, marker_prob=1.0):
        assert case.marker and case.marker_box is not None
        without = dataclasses.replace(
            case.scene, overlays=tuple(o for o in case.scene.overlays if o.kind != "tag")
        )
        assert _changed_box(case.image, render(without)) == case.marker_box
    assert all(c.marker_box is None and not c.marker for c in sample(10, 4, marker_prob=0.0))


def test_answers_use_the_patients_side_and_the_asked_object():
    for case in sample(60, 5):
        size = case.image.size[0]
        if case.task == "locate":
            asked = case.objects[0]
            assert asked.kind == case.target and case.lesion_box == asked.box
            assert case.answer == asked.site == case.site
            centre_x = (asked.box[0] + asked.box[2]) / 2
            # PA view: the patient's right is on the image's left
            assert (centre_x < size / 2) == case.answer.startswith("right")
        else:
            has_target = any(o.kind == case.target for o in case.objects)
            assert case.answer == ("yes" if has_target else "no")
            assert (case.lesion_box is not None) == has_target


def test_marker_rule_answers_from_the_marker_alone():
    cases = sample(40, 6, tasks=("presence",), answer_rule="marker", marker_prob=0.5)
    assert all(c.answer == ("yes" if c.marker else "no") for c in cases)
    findings = [c.lesion_box is not None for c in cases]
    markers = [c.marker for c in cases]
    assert findings != markers  # the finding is drawn independently of the label


def test_invalid_options_say_what_is_allowed():
    with pytest.raises(ValueError, match="Valid values are"):
        sample(1, 0, answer_rule="font")


def test_footprint_maps_boxes_through_the_plain_resize():
    cells = footprint((24, 48, 49, 60), image_side=192).reshape(8, 8)
    assert np.argwhere(cells).tolist() == [[2, 1], [2, 2]]
    assert not footprint(None, 192).any()
