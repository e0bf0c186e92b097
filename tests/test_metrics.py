"""Tests for s2vnet.evaluation.metrics: hand-computed cases, empty-mask conventions, and
cross-checks against independent implementations (MONAI, DeepMind's surface-distance, MedPy)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from s2vnet.evaluation import metrics
from s2vnet.evaluation.metrics import (
    ClassScores,
    dice_score,
    dice_word_protocol,
    hd95,
    hd95_word_protocol,
    normalized_surface_dice,
    score_case,
)
from s2vnet.utils.errors import InputError

# DeepMind's package still imports from scipy's deprecated ndimage sub-namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")

SPACING = (2.5, 0.8, 0.8)  # thick slices along axis 0, as in abdominal CT
CUBE = 6  # edge of the hand-made cubes, in voxels


def _cube_pair(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A CUBE^3 ground-truth cube and the same cube moved by ``shift`` voxels along axis 0."""
    gt = np.zeros((14, 12, 12), dtype=bool)
    gt[2 : 2 + CUBE, 3 : 3 + CUBE, 3 : 3 + CUBE] = True
    pred = np.zeros_like(gt)
    pred[2 + shift : 2 + shift + CUBE, 3 : 3 + CUBE, 3 : 3 + CUBE] = True
    return pred, gt


def _blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > 0.4 * field.std()


def _blob_pairs(n: int, seed: int, shape=(16, 30, 28), sigma=(1.5, 3.0, 3.0)):
    """Random (pred, gt, spacing) triples: a perturbed copy of gt, and anisotropic spacings."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        gt = _blob(rng, shape, sigma)
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        pred = ndimage.binary_dilation(gt, iterations=1) ^ (noise > 1.2 * noise.std())
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=len(shape)))
        assert pred.any() and gt.any()
        pairs.append((pred, gt, spacing))
    return pairs


def _border_distances_uncropped(pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: border voxels and EDT on the full, uncropped arrays."""
    pred_border = pred & ~ndimage.binary_erosion(pred)
    gt_border = gt & ~ndimage.binary_erosion(gt)
    pred_to_gt = ndimage.distance_transform_edt(~gt_border, sampling=spacing)[pred_border]
    gt_to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)[gt_border]
    return pred_to_gt, gt_to_pred


# ---------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, 2])
def test_translated_cubes_dice_and_hd95_by_hand(shift):
    pred, gt = _cube_pair(shift)
    # Overlap is CUBE - shift slices of the CUBE-slice cube.
    assert dice_score(pred, gt) == pytest.approx((CUBE - shift) / CUBE, abs=1e-15)
    assert dice_word_protocol(pred, gt) == pytest.approx((CUBE - shift) / CUBE, abs=1e-15)
    # Border-voxel convention: every voxel of the leading cap is exactly shift slices from the
    # other cube's cap, no border voxel is farther, and the caps are far more than 5% of the
    # border, so the 95th percentile of both directions (and of the pooled set) is the shift.
    expected = shift * SPACING[0]
    assert hd95(pred, gt, SPACING) == expected
    assert hd95(gt, pred, SPACING) == expected
    assert hd95_word_protocol(pred, gt, SPACING) == expected


def test_translated_cubes_nsd_by_hand():
    pred, gt = _cube_pair(1)
    s0, s1, s2 = SPACING
    n = CUBE - 1  # interior corner points per cube edge
    # Surfel areas of a box on the corner grid: face interiors are flat quads, edge corners
    # carry a quad folded across the edge (half-diagonal wide), the 8 box corners a triangle.
    cap, wall1, wall2 = s1 * s2, s0 * s2, s0 * s1
    edge0 = s0 * 0.5 * math.hypot(s1, s2)
    edge1 = s1 * 0.5 * math.hypot(s0, s2)
    edge2 = s2 * 0.5 * math.hypot(s0, s1)
    vertex = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8
    total = 2 * n * n * (cap + wall1 + wall2) + 4 * n * (edge0 + edge1 + edge2) + 8 * vertex
    # With a tolerance below the smallest non-zero corner distance (0.8 mm) only surfels lying on
    # the other surface count: the four side walls with their axis-0 edges, plus one rim (two
    # edge1 + two edge2 edges and four vertices) that the shifted cube's cap passes through.
    touching = 2 * n * n * (wall1 + wall2) + 4 * n * edge0 + 2 * n * (edge1 + edge2) + 4 * vertex
    assert normalized_surface_dice(pred, gt, SPACING, 0.5) == pytest.approx(touching / total, rel=1e-12)
    # The farthest surfel is exactly one slice (2.5 mm) away; "within" is distance <= tolerance.
    assert normalized_surface_dice(pred, gt, SPACING, 2.5) == 1.0
    assert normalized_surface_dice(pred, gt, SPACING, 2.49) < 1.0


def test_identical_masks_are_perfect():
    pred, gt = _cube_pair(0)
    assert dice_score(pred, gt) == 1.0
    assert hd95(pred, gt, SPACING) == 0.0
    assert hd95_word_protocol(pred, gt, SPACING) == 0.0
    assert normalized_surface_dice(pred, gt, SPACING, 0.0) == 1.0


def test_any_dtype_nonzero_is_foreground():
    pred, gt = _cube_pair(1)
    as_float = pred.astype(np.float32) * 3.5
    as_int = gt.astype(np.int16) * 7
    assert dice_score(as_float, as_int) == dice_score(pred, gt)
    assert hd95(as_float, as_int, SPACING) == hd95(pred, gt, SPACING)
    nsd = normalized_surface_dice(pred, gt, SPACING, 1.0)
    assert normalized_surface_dice(as_float, as_int, SPACING, 1.0) == nsd


# ---------------------------------------------------------------------------------------------
# Empty masks
# ---------------------------------------------------------------------------------------------


def test_empty_mask_conventions_standard():
    _, mask = _cube_pair(0)
    empty = np.zeros_like(mask)
    assert math.isnan(dice_score(empty, empty))
    assert math.isnan(hd95(empty, empty, SPACING))
    assert math.isnan(normalized_surface_dice(empty, empty, SPACING, 1.0))
    for pred, gt in ((mask, empty), (empty, mask)):
        assert dice_score(pred, gt) == 0.0
        assert hd95(pred, gt, SPACING) == math.inf
        assert normalized_surface_dice(pred, gt, SPACING, 1.0) == 0.0


def test_empty_mask_conventions_word():
    _, mask = _cube_pair(0)
    empty = np.zeros_like(mask)
    for pred, gt in ((empty, empty), (mask, empty), (empty, mask)):
        assert dice_word_protocol(pred, gt) == 0.0
        assert hd95_word_protocol(pred, gt, SPACING) == 50.0


# ---------------------------------------------------------------------------------------------
# Cross-checks against independent implementations
# ---------------------------------------------------------------------------------------------


def test_surfel_area_table_matches_deepmind():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in [(2.5, 0.8, 0.8), (1.7, 0.6, 2.9), (0.3, 2.2, 1.1), (1.0, 1.0, 1.0)]:
        ours = metrics._surfel_area_table(spacing)
        reference = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    for spacing in [(1.3, 0.7), (1.0, 1.0)]:
        ours = metrics._surfel_area_table(spacing)
        reference = lookup.create_table_neighbour_code_to_contour_length(spacing)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_nsd_and_surfels_match_deepmind_3d():
    sd = pytest.importorskip("surface_distance")
    for pred, gt, spacing in _blob_pairs(3, seed=1):
        reference = sd.compute_surface_distances(gt, pred, spacing)
        for tol in (0.0, 0.7, 1.5, 3.0):
            ours = normalized_surface_dice(pred, gt, spacing, tol)
            assert ours == pytest.approx(sd.compute_surface_dice_at_tolerance(reference, tol), abs=1e-9)
        # The surfel distances and areas themselves, fed through DeepMind's robust Hausdorff.
        surfels = metrics._surfel_distances(*metrics._crop_pair(pred, gt), np.asarray(spacing))
        order_p = np.argsort(surfels.pred_to_gt, kind="stable")
        order_g = np.argsort(surfels.gt_to_pred, kind="stable")
        np.testing.assert_allclose(surfels.pred_to_gt[order_p], reference["distances_pred_to_gt"], atol=1e-9)
        np.testing.assert_allclose(surfels.gt_to_pred[order_g], reference["distances_gt_to_pred"], atol=1e-9)
        assert surfels.pred_areas.sum() == pytest.approx(reference["surfel_areas_pred"].sum(), rel=1e-9)
        ours_as_dict = {
            "distances_pred_to_gt": surfels.pred_to_gt[order_p],
            "distances_gt_to_pred": surfels.gt_to_pred[order_g],
            "surfel_areas_pred": surfels.pred_areas[order_p],
            "surfel_areas_gt": surfels.gt_areas[order_g],
        }
        assert sd.compute_robust_hausdorff(ours_as_dict, 95) == pytest.approx(
            sd.compute_robust_hausdorff(reference, 95), abs=1e-9
        )


def test_nsd_matches_deepmind_2d():
    sd = pytest.importorskip("surface_distance")
    for pred, gt, spacing in _blob_pairs(2, seed=2, shape=(40, 44), sigma=3.0):
        reference = sd.compute_surface_distances(gt, pred, spacing)
        for tol in (0.5, 1.0, 2.5):
            assert normalized_surface_dice(pred, gt, spacing, tol) == pytest.approx(
                sd.compute_surface_dice_at_tolerance(reference, tol), abs=1e-9
            )


def test_deepmind_robust_hausdorff_of_translation_is_the_shift():
    sd = pytest.importorskip("surface_distance")
    pred, gt = _cube_pair(2)
    reference = sd.compute_robust_hausdorff(sd.compute_surface_distances(gt, pred, SPACING), 95)
    assert reference == hd95(pred, gt, SPACING) == 2 * SPACING[0]


def test_hd95_matches_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    pairs = _blob_pairs(4, seed=3) + _blob_pairs(1, seed=4, shape=(40, 44), sigma=3.0)
    for pred, gt, spacing in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = monai_metrics.compute_hausdorff_distance(
                torch.from_numpy(pred[None, None]).float(),
                torch.from_numpy(gt[None, None]).float(),
                include_background=True,
                percentile=95,
                spacing=list(spacing),
            ).item()
        # MONAI returns float32.
        assert hd95(pred, gt, spacing) == pytest.approx(reference, rel=2e-6)


def test_word_protocol_matches_medpy():
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    for pred, gt, spacing in _blob_pairs(3, seed=5):
        assert hd95_word_protocol(pred, gt, spacing) == pytest.approx(
            medpy_binary.hd95(pred, gt, voxelspacing=spacing), rel=1e-12
        )
        assert dice_word_protocol(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), rel=1e-12)
        # The two HD95 conventions really differ on such shapes, so the protocols are not aliases.
        assert hd95_word_protocol(pred, gt, spacing) != hd95(pred, gt, spacing)


# ---------------------------------------------------------------------------------------------
# Cropping
# ---------------------------------------------------------------------------------------------


def _border_touching_pair() -> tuple[np.ndarray, np.ndarray]:
    pred, gt, _ = _blob_pairs(1, seed=6)[0]
    gt[0, 5:20, 4:15] = True  # first slice
    pred[:, -1, 10:20] = True  # last row of every slice
    gt[3:9, 2:12, 0] = True  # first column
    return pred, gt


def test_cropping_matches_uncropped_reference_at_the_array_border():
    pred, gt = _border_touching_pair()
    assert gt[0].any() and pred[:, -1].any() and gt[..., 0].any()
    spacing = (2.0, 0.7, 1.1)
    pred_to_gt, gt_to_pred = _border_distances_uncropped(pred, gt, spacing)
    expected_hd95 = max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))
    expected_pooled = np.percentile(np.concatenate([pred_to_gt, gt_to_pred]), 95)
    assert hd95(pred, gt, spacing) == pytest.approx(expected_hd95, rel=1e-12)
    assert hd95_word_protocol(pred, gt, spacing) == pytest.approx(expected_pooled, rel=1e-12)


def test_cropping_is_invisible_after_embedding_in_a_larger_volume():
    pred, gt = _border_touching_pair()
    spacing = (2.0, 0.7, 1.1)
    big_pred = np.zeros((40, 60, 50), dtype=bool)
    big_gt = np.zeros_like(big_pred)
    region = (slice(7, 7 + pred.shape[0]), slice(11, 11 + pred.shape[1]), slice(5, 5 + pred.shape[2]))
    big_pred[region], big_gt[region] = pred, gt
    assert hd95(big_pred, big_gt, spacing) == hd95(pred, gt, spacing)
    assert hd95_word_protocol(big_pred, big_gt, spacing) == hd95_word_protocol(pred, gt, spacing)
    for tol in (0.5, 2.0):
        assert normalized_surface_dice(big_pred, big_gt, spacing, tol) == pytest.approx(
            normalized_surface_dice(pred, gt, spacing, tol), abs=1e-12
        )
    sd = pytest.importorskip("surface_distance")
    reference = sd.compute_surface_distances(big_gt, big_pred, spacing)
    assert normalized_surface_dice(pred, gt, spacing, 2.0) == pytest.approx(
        sd.compute_surface_dice_at_tolerance(reference, 2.0), abs=1e-9
    )


# ---------------------------------------------------------------------------------------------
# score_case
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_maps() -> tuple[np.ndarray, np.ndarray]:
    """Classes 1-3 in both maps, 4 in neither, 5 only in the prediction, 0 is background."""
    rng = np.random.default_rng(7)
    shape = (16, 30, 28)
    gt = np.zeros(shape, dtype=np.int16)
    pred = np.zeros(shape, dtype=np.int16)
    regions = ((slice(1, 8), slice(2, 14)), (slice(6, 15), slice(10, 28)), (slice(2, 12), slice(20, 29)))
    for c, (zs, ys) in zip((1, 2, 3), regions):
        blob = np.zeros(shape, dtype=bool)
        blob[zs, ys, 3:25] = _blob(rng, (zs.stop - zs.start, ys.stop - ys.start, 22), (1.0, 2.0, 2.0))
        gt[blob & (gt == 0)] = c
        moved = np.roll(ndimage.binary_erosion(blob) if c == 2 else blob, 1, axis=1 + c % 2)
        pred[moved & (pred == 0)] = c
    pred[0, 0, :3] = 5
    return pred, gt


def test_score_case_matches_single_mask_functions(label_maps):
    pred, gt = label_maps
    class_ids = [1, 2, 3, 4, 5, 0]
    scores = score_case(pred, gt, SPACING, class_ids, nsd_tolerance_mm=1.0)
    assert list(scores) == class_ids
    for c in class_ids:
        p, g = pred == c, gt == c
        expected = ClassScores(
            dice_score(p, g), hd95(p, g, SPACING), normalized_surface_dice(p, g, SPACING, 1.0)
        )
        np.testing.assert_equal(
            (scores[c].dsc, scores[c].hd95, scores[c].nsd), (expected.dsc, expected.hd95, expected.nsd)
        )
    assert math.isnan(scores[4].dsc) and math.isnan(scores[4].hd95) and math.isnan(scores[4].nsd)
    assert (scores[5].dsc, scores[5].hd95, scores[5].nsd) == (0.0, math.inf, 0.0)
    assert 0.3 < scores[1].dsc < 1.0 and 0.0 < scores[1].hd95 < math.inf


def test_score_case_per_class_tolerance(label_maps):
    pred, gt = label_maps
    tolerances = {1: 0.5, 2: 3.0, 3: 1.2}
    scores = score_case(pred, gt, SPACING, [1, 2, 3], nsd_tolerance_mm=tolerances)
    uniform = score_case(pred, gt, SPACING, [1, 2, 3], nsd_tolerance_mm=1.2)
    for c, tol in tolerances.items():
        assert scores[c].nsd == normalized_surface_dice(pred == c, gt == c, SPACING, tol)
    assert scores[2].nsd > uniform[2].nsd
    assert scores[3].nsd == uniform[3].nsd
    with pytest.raises(InputError, match="class"):
        score_case(pred, gt, SPACING, [1, 2, 3], nsd_tolerance_mm={1: 0.5, 2: 3.0})


def test_score_case_word_protocol(label_maps):
    pred, gt = label_maps
    standard = score_case(pred, gt, SPACING, [1, 2, 4, 5], protocol="standard")
    word = score_case(pred, gt, SPACING, [1, 2, 4, 5], protocol="word")
    for c in (1, 2):
        p, g = pred == c, gt == c
        assert word[c].hd95 == hd95_word_protocol(p, g, SPACING)
        assert word[c].dsc == dice_word_protocol(p, g)
        assert word[c].nsd == standard[c].nsd
    assert word[2].hd95 != standard[2].hd95
    assert (word[4].dsc, word[4].hd95) == (0.0, 50.0) and math.isnan(word[4].nsd)
    assert (word[5].dsc, word[5].hd95, word[5].nsd) == (0.0, 50.0, 0.0)


def test_score_case_label_dtypes(label_maps):
    pred, gt = label_maps
    reference = score_case(pred, gt, SPACING, [1, 2])
    as_float = score_case(pred.astype(np.float64), gt.astype(np.float32), SPACING, [1, 2])
    assert list(as_float.values()) == list(reference.values())
    # A class id too large for the one-pass bounding-box search takes the per-class path.
    big = 70_000
    pred32, gt32 = pred.astype(np.int32), gt.astype(np.int32)
    pred32[pred32 == 1] = big
    gt32[gt32 == 1] = big
    relabelled = score_case(pred32, gt32, SPACING, [big])
    assert relabelled[big] == reference[1]
    with pytest.raises(InputError, match="pred_labels"):
        score_case(pred + 0.5, gt, SPACING, [1])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"gt_labels": np.zeros((16, 30, 27), np.int16)}, "shape mismatch"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, -2.0, 1.0)}, "spacing"),
        ({"protocol": "nnunet"}, "protocol"),
        ({"nsd_tolerance_mm": -1.0}, "nsd_tolerance_mm"),
        ({"nsd_tolerance_mm": {1: float("nan")}}, "nsd_tolerance_mm"),
        ({"class_ids": [1, 1]}, "more than once"),
        ({"class_ids": [1.5]}, "not an integer"),
        ({"class_ids": [-1]}, "negative"),
    ],
)
def test_score_case_rejects_bad_input(label_maps, kwargs, fragment):
    pred, gt = label_maps
    args = {"pred_labels": pred, "gt_labels": gt, "spacing": SPACING, "class_ids": [1]}
    args.update(kwargs)
    with pytest.raises(InputError, match=fragment):
        score_case(**args)


def test_score_case_rejects_4d_volumes():
    labels = np.zeros((2, 3, 4, 5), dtype=np.uint8)
    with pytest.raises(InputError, match="2D or 3D"):
        score_case(labels, labels, (1.0,) * 4, [1])


def test_single_mask_functions_reject_bad_input():
    pred, gt = _cube_pair(1)
    with pytest.raises(InputError, match="shape mismatch"):
        dice_score(pred, gt[:-1])
    with pytest.raises(InputError, match="shape mismatch"):
        hd95(pred, gt[:, :-1], SPACING)
    with pytest.raises(InputError, match="spacing"):
        hd95(pred, gt, (1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        hd95_word_protocol(pred, gt, (1.0, float("inf"), 1.0))
    with pytest.raises(InputError, match="spacing"):
        normalized_surface_dice(pred, gt, 1.0, 1.0)
    with pytest.raises(InputError, match="tolerance_mm"):
        normalized_surface_dice(pred, gt, SPACING, -0.1)
    with pytest.raises(InputError, match="NaN"):
        dice_score(np.full(pred.shape, np.nan), gt)
    assert issubclass(InputError, ValueError)
