"""Tests for s2vnet.data.clicks: deepest points, initial and corrective click simulation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from s2vnet.data.clicks import Click, corrective_clicks, deepest_point, initial_clicks
from s2vnet.utils.errors import InputError


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ---------------------------------------------------------------------------------------------
# deepest_point
# ---------------------------------------------------------------------------------------------


def test_square_gives_its_centre() -> None:
    region = np.zeros((20, 20), bool)
    region[3:12, 5:14] = True  # 9 x 9, centre (7, 9)
    assert deepest_point(region) == (0, 7, 9)


def test_elongated_rectangle_gives_a_point_on_its_mid_line() -> None:
    region = np.zeros((20, 30), bool)
    region[4:11, 5:25] = True  # 7 rows: the deepest pixels are all on row 7, columns 8..21
    z, y, x = deepest_point(region)
    assert (z, y) == (0, 7)
    # Ties resolve to the pixel nearest the ridge centre: columns 8..21 -> 14.5 -> 14 (first).
    assert x == 14


def test_region_touching_the_array_border_counts_outside_as_outside() -> None:
    full = np.ones((7, 7), bool)
    assert deepest_point(full) == (0, 3, 3)
    corner = np.zeros((20, 20), bool)
    corner[:9, :9] = True
    assert deepest_point(corner) == (0, 4, 4)


def test_two_discs_gives_a_point_in_the_larger_one() -> None:
    shape = (40, 60)
    region = _disc(shape, (20, 12), 4) | _disc(shape, (20, 40), 9)
    _, y, x = deepest_point(region)
    assert (y - 20) ** 2 + (x - 40) ** 2 <= 1


def test_l_shape_gives_a_point_in_the_thick_arm() -> None:
    region = np.zeros((40, 40), bool)
    region[2:38, 2:6] = True  # thin vertical arm, 4 wide: depth 2 at most
    region[26:38, 2:38] = True  # thick horizontal arm, 12 high: depth 6 on its mid rows
    _, y, x = deepest_point(region)
    assert y in (31, 32) and 7 <= x <= 32


def test_anisotropic_in_plane_spacing_moves_the_deepest_point() -> None:
    # Blob A is 9 x 9 pixels (depth 5 px), blob B is 7 x 31 pixels (depth 4 px). With rows 2 mm
    # apart and columns 1 mm apart, A's depth becomes min(10, 5) = 5 mm and B's min(8, 16) = 8 mm.
    region = np.zeros((20, 60), bool)
    region[2:11, 2:11] = True
    region[12:19, 20:51] = True
    _, y_iso, x_iso = deepest_point(region)
    assert 2 <= y_iso < 11 and 2 <= x_iso < 11
    _, y_aniso, x_aniso = deepest_point(region, spacing=(2.0, 1.0))
    assert y_aniso == 15 and 20 <= x_aniso < 51
    # In 3D only the in-plane part of the spacing matters.
    assert deepest_point(region[None], spacing=(5.0, 2.0, 1.0)) == (0, y_aniso, x_aniso)


def test_3d_uses_the_largest_cross_section() -> None:
    region = np.zeros((5, 50, 50), bool)
    region[1, 10:13, 5:45] = True  # 3 x 40 = 120 pixels, but only 2 px deep
    region[3, 20:29, 20:29] = True  # 9 x 9 = 81 pixels, 5 px deep
    region[2, 25, 25] = True
    assert deepest_point(region, spacing=(3.0, 1.0, 1.0))[0] == 1
    assert deepest_point(region[3:])[0] == 0  # sanity: z is relative to the given array


def test_jitter_stays_inside_near_the_maximum_and_varies_with_seed() -> None:
    region = _disc((64, 64), (32, 32), 20)
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    points = set()
    for seed in range(10):
        z, y, x = deepest_point(region, rng=np.random.default_rng(seed), jitter_fraction=0.5)
        assert z == 0 and region[y, x]
        assert depth[y, x] >= 0.5 * depth.max()
        points.add((y, x))
    assert len(points) > 1
    # Same seed, same point.
    a = deepest_point(region, rng=np.random.default_rng(3), jitter_fraction=0.5)
    assert a == deepest_point(region, rng=np.random.default_rng(3), jitter_fraction=0.5)
    # An rng without jitter changes nothing.
    assert deepest_point(region, rng=np.random.default_rng(0)) == deepest_point(region) == (0, 32, 32)


# ---------------------------------------------------------------------------------------------
# initial_clicks
# ---------------------------------------------------------------------------------------------


def test_initial_clicks_use_the_largest_3d_component() -> None:
    gt = np.zeros((12, 40, 40), np.uint8)
    gt[1:11, 5:11, 5:11] = 1  # 10 slices x 36 = 360 voxels, small cross-sections
    gt[6, 20:35, 20:35] = 1  # 225 voxels in one slice: the largest cross-section, not the largest component
    gt[2:5, 30:36, 2:8] = 3
    clicks = initial_clicks(gt, [3, 1, 2])
    assert [c.label for c in clicks] == [1, 3]  # class 2 is absent; sorted by class id
    c1 = clicks[0]
    assert 5 <= c1.y < 11 and 5 <= c1.x < 11 and gt[c1.z, c1.y, c1.x] == 1
    c3 = clicks[1]
    assert gt[c3.z, c3.y, c3.x] == 3
    assert initial_clicks(gt, [1, 2, 3]) == clicks  # deterministic, order of class_ids irrelevant


def test_initial_clicks_absent_class_and_2d() -> None:
    gt = np.zeros((30, 30), np.int64)
    gt[5:16, 10:21] = 2
    assert initial_clicks(gt, [1]) == []
    assert initial_clicks(gt, [2]) == [Click(0, 10, 15, 2)]


def test_initial_clicks_with_jitter_stay_inside_and_vary_with_seed() -> None:
    gt = np.zeros((3, 64, 64), np.uint8)
    gt[1][_disc((64, 64), (30, 34), 18)] = 4
    seen = set()
    for seed in range(8):
        (click,) = initial_clicks(gt, [4], rng=np.random.default_rng(seed), jitter_fraction=0.4)
        assert click.label == 4 and gt[click.z, click.y, click.x] == 4
        seen.add((click.y, click.x))
    assert len(seen) > 1


def test_initial_clicks_never_land_on_ignore() -> None:
    gt = np.zeros((20, 20), np.uint8)
    gt[2:17, 2:17] = 1
    gt[7:12, 7:12] = 255  # a hole of ignore pixels where the deepest point would be
    (click,) = initial_clicks(gt, [1], ignore_label=255)
    assert gt[click.y, click.x] == 1


# ---------------------------------------------------------------------------------------------
# corrective_clicks
# ---------------------------------------------------------------------------------------------


def test_false_negative_gives_a_positive_click_in_the_missed_region() -> None:
    gt = np.zeros((4, 40, 40), np.uint8)
    gt[:, 5:35, 5:35] = 1
    pred = gt.copy()
    pred[:, 5:35, 20:35] = 0  # right half missed
    pred[2, 5:7, 5:7] = 1
    (click,) = corrective_clicks(gt, pred, [1])
    assert click.label == 1
    assert gt[click.z, click.y, click.x] == 1 and pred[click.z, click.y, click.x] == 0


def test_false_positive_gives_a_negative_click_in_the_fp_region() -> None:
    gt = np.zeros((3, 40, 40), np.uint8)
    gt[:, 5:15, 5:15] = 1
    pred = gt.copy()
    pred[:, 20:35, 20:35] = 1  # large false positive on background
    pred[1, 5, 5] = 0  # tiny false negative
    (click,) = corrective_clicks(gt, pred, [1])
    assert click.label == 0
    assert 20 <= click.y < 35 and 20 <= click.x < 35


def test_false_positive_on_another_organ_gives_that_organ() -> None:
    gt = np.zeros((3, 40, 40), np.uint8)
    gt[:, 5:15, 5:15] = 1
    gt[:, 20:35, 20:35] = 2
    pred = gt.copy()
    pred[:, 22:34, 22:34] = 1  # organ 2 predicted as organ 1
    clicks = corrective_clicks(gt, pred, [1, 2])
    assert [c.label for c in clicks] == [2, 2]  # class 1's click says "this is 2", class 2's is positive
    for click in clicks:
        assert 22 <= click.y < 34 and 22 <= click.x < 34


def test_ties_between_fn_and_fp_prefer_the_false_negative() -> None:
    gt = np.zeros((20, 40), np.uint8)
    gt[5:10, 5:10] = 1
    pred = np.zeros_like(gt)
    pred[5:10, 25:30] = 1  # FN and FP both 25 pixels
    assert corrective_clicks(gt, pred, [1]) == [Click(0, 7, 7, 1)]


def test_the_largest_error_is_counted_in_3d_not_per_slice() -> None:
    gt = np.zeros((8, 40, 40), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:8, 2:8, 2:8] = 1  # FN: 8 x 36 = 288 voxels, 36 per slice
    pred[3, 15:30, 15:30] = 1  # FP: 225 voxels in one slice
    (click,) = corrective_clicks(gt, pred, [1])
    assert click.label == 1 and 2 <= click.y < 8


def test_no_errors_no_clicks() -> None:
    gt = np.zeros((3, 20, 20), np.uint8)
    gt[:, 5:10, 5:10] = 1
    gt[:, 12:18, 12:18] = 2
    assert corrective_clicks(gt, gt.copy(), [0, 1, 2, 3]) == []


def test_ignore_pixels_are_never_clicked_nor_errors() -> None:
    gt = np.zeros((30, 30), np.uint8)
    gt[5:10, 5:10] = 1
    gt[15:30, 0:30] = 255
    pred = np.zeros_like(gt)
    pred[5:10, 5:10] = 1
    pred[15:30, 0:30] = 1  # a "false positive" that lies entirely on ignore pixels
    assert corrective_clicks(gt, pred, [1], ignore_label=255) == []
    pred[0:3, 20:23] = 1  # a real, much smaller false positive
    (click,) = corrective_clicks(gt, pred, [1], ignore_label=255)
    assert click.label == 0 and (click.y, click.x) == (1, 21)
    # Without the ignore label the big region is an error and wins.
    (click,) = corrective_clicks(gt, pred, [1])
    assert gt[click.y, click.x] == 255


def test_one_click_per_erroneous_class() -> None:
    gt = np.zeros((5, 50, 50), np.int32)
    gt[:, 2:12, 2:12] = 1
    gt[:, 20:30, 2:12] = 2
    gt[:, 2:12, 30:45] = 3
    gt[:, 35:45, 35:45] = 4
    pred = gt.copy()
    pred[:, 2:12, 2:6] = 0  # class 1: FN
    pred[:, 32:48, 2:20] = 2  # class 2: FP on background
    pred[:, 35:45, 35:45] = 3  # class 3: FP on organ 4, class 4: FN
    clicks = corrective_clicks(gt, pred, [4, 3, 2, 1, 5])
    assert [(gt[c.z, c.y, c.x], c.label) for c in clicks] == [(1, 1), (0, 0), (4, 4), (4, 4)]
    assert len(clicks) == 4


def test_corrective_clicks_on_2d_input() -> None:
    gt = np.zeros((32, 32), np.uint8)
    gt[4:15, 4:15] = 1
    pred = np.zeros_like(gt)
    clicks = corrective_clicks(gt, pred, [1], spacing=(0.7, 0.7))
    assert clicks == [Click(0, 9, 9, 1)]
    with pytest.raises(TypeError):  # the options are keyword-only: a spacing cannot pass for a class list
        corrective_clicks(gt, pred, [1], (0.7, 0.7))


def test_corrective_clicks_with_jitter_stay_in_the_error_region() -> None:
    gt = np.zeros((2, 64, 64), np.uint8)
    gt[0][_disc((64, 64), (32, 32), 20)] = 1
    pred = np.zeros_like(gt)
    pred[0, 10:54, 10:32] = 1  # left part right, right part missed
    pred[0] &= gt[0]
    fn = (gt == 1) & (pred != 1)
    seen = set()
    for seed in range(8):
        (click,) = corrective_clicks(gt, pred, [1], rng=np.random.default_rng(seed), jitter_fraction=0.3)
        assert click.label == 1 and fn[click.z, click.y, click.x]
        seen.add((click.y, click.x))
    assert len(seen) > 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputError, match=r"\(4, 5\).*\(4, 6\)"):
        corrective_clicks(np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8), [1])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(class_ids=[-1]), "class id -1"),
        (dict(class_ids=[1.5]), "class id 1.5"),
        (dict(class_ids=[True]), "class id True"),
        (dict(class_ids=[1, 1]), "more than once"),
        (dict(class_ids=[1], spacing=(1.0, 1.0)), "spacing"),
        (dict(class_ids=[1], spacing=(1.0, 0.0, 1.0)), "positive"),
        (dict(class_ids=[1], jitter_fraction=1.0), "jitter_fraction"),
        (dict(class_ids=[1], jitter_fraction=-0.1), "jitter_fraction"),
        (dict(class_ids=[1], jitter_fraction=0.2), "rng"),
        (dict(class_ids=[1, 255], ignore_label=255), "ignore_label"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, pattern: str) -> None:
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[:, 2:5, 2:5] = 1
    with pytest.raises(InputError, match=pattern):
        initial_clicks(gt, **kwargs)
    with pytest.raises(InputError, match=pattern):
        corrective_clicks(gt, gt.copy(), **kwargs)


def test_bad_arrays_raise() -> None:
    with pytest.raises(InputError, match="float"):
        initial_clicks(np.zeros((4, 4), np.float32), [1])
    with pytest.raises(InputError, match="shape"):
        initial_clicks(np.zeros((2, 2, 4, 4), np.uint8), [1])
    with pytest.raises(InputError, match="negative label -3"):
        corrective_clicks(np.zeros((4, 4), np.int16), np.full((4, 4), -3, np.int16), [1])
    with pytest.raises(InputError, match="empty"):
        deepest_point(np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="boolean"):
        deepest_point(np.ones((4, 4), np.uint8))
    with pytest.raises(InputError, match="spacing"):
        deepest_point(np.ones((4, 4), bool), spacing=(1.0, 1.0, 1.0))


def test_click_validates_and_is_frozen() -> None:
    click = Click(np.int64(1), 2, 3, 0)
    assert type(click.z) is int and not click.is_positive
    with pytest.raises(InputError, match="Click.y"):
        Click(0, -1, 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        click.z = 5  # type: ignore[misc]
