"""Volume inference, interactive sessions and the prediction CLI."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_model
from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.phantom import generate_phantom
from s2vnet.data.volume_io import canonical_to_original_index, original_to_canonical_index, read_volume
from s2vnet.inference.session import InteractiveSession
from s2vnet.inference.volume_predictor import VolumePredictor
from s2vnet.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_volume():
    phantom = generate_phantom(5, (12, 64, 64))
    return normalize_intensity(phantom.image.astype(np.float32), "CT"), phantom.labels


@pytest.fixture(scope="module")
def random_model():
    return tiny_model(tiny_config(num_classes=8)).eval()


def test_automatic_prediction_shapes_and_scores(random_model, phantom_volume):
    volume, _ = phantom_volume
    prediction = VolumePredictor(random_model, slice_batch_size=5).predict_automatic(volume, return_scores=True)
    assert prediction.labels.shape == volume.shape and prediction.labels.dtype == np.uint8
    assert prediction.scores.shape == (8,) + volume.shape
    # Labels are the argmax of the scores (up to float16 rounding of near-ties in the saved scores).
    assert np.mean(prediction.scores.astype(np.float32).argmax(0) == prediction.labels) > 0.99


def test_batch_size_does_not_change_the_result(random_model, phantom_volume):
    volume, _ = phantom_volume
    one = VolumePredictor(random_model, slice_batch_size=1).predict_automatic(volume, return_scores=True)
    many = VolumePredictor(random_model, slice_batch_size=7).predict_automatic(volume, return_scores=True)
    assert np.allclose(one.scores.astype(np.float32), many.scores.astype(np.float32), atol=2e-3)


def test_resized_inference_returns_the_native_grid(random_model, phantom_volume):
    volume, _ = phantom_volume
    prediction = VolumePredictor(random_model, input_size=96).predict_automatic(volume[:, :, :50])
    assert prediction.labels.shape == (12, 64, 50)


def test_bad_volumes_are_rejected(random_model):
    predictor = VolumePredictor(random_model)
    with pytest.raises(InputError, match="uint8"):
        predictor.predict_automatic(np.zeros((4, 32, 32), np.float32))
    with pytest.raises(InputError, match="shape"):
        predictor.predict_automatic(np.zeros((32, 32), np.uint8))


def _count_backbone_calls(model):
    calls = {"n": 0}
    model.backbone.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_click_rounds_reuse_the_cached_features(phantom_volume):
    model = tiny_model(tiny_config(num_classes=8)).eval()
    volume, _ = phantom_volume
    calls = _count_backbone_calls(model)
    session = InteractiveSession(model, volume)
    opened = calls["n"]
    assert opened >= 1
    session.click(6, 30, 30, 1)
    session.click(4, 20, 40, 0)
    session.run()
    session.click(7, 33, 31, 1)
    session.run()
    assert calls["n"] == opened  # no backbone pass after the session opened


def test_clicks_are_validated(random_model, phantom_volume):
    volume, _ = phantom_volume
    session = InteractiveSession(random_model, volume)
    with pytest.raises(InputError, match="slice"):
        session.click(12, 0, 0, 1)
    with pytest.raises(InputError, match="x"):
        session.click(0, 0, -1, 1)
    with pytest.raises(InputError, match="label"):
        session.click(0, 0, 0, 8)
    # A class gets one cluster centre per round it is clicked in, up to MAX_CLICKS_PER_CLASS.
    random_model.interaction = replace(random_model.interaction, max_clicks_per_class=2)
    try:
        session.click(0, 1, 1, 2)
        session.click(0, 2, 2, 2)  # same round: same centre
        session.run()
        session.click(1, 2, 2, 2)
        session.run()
        with pytest.raises(InputError, match="maximum"):
            session.click(0, 3, 3, 2)
        session.click(0, 3, 3, 3)  # other classes are not limited by it
    finally:
        random_model.interaction = replace(random_model.interaction, max_clicks_per_class=20)


def test_undo_and_reset_restore_earlier_results(random_model, phantom_volume):
    volume, _ = phantom_volume
    random_model.propagation = replace(random_model.propagation, score_threshold=0.0)  # random weights: let click centroids propagate
    try:
        session = InteractiveSession(random_model, volume)
        automatic = session.run().labels
        session.click(6, 30, 30, 3)
        first = session.run().labels
        session.click(5, 20, 20, 5)
        session.run()
        session.undo()
        assert np.array_equal(session.result().labels, first)
        session.click(5, 20, 20, 5)
        session.run()
        session.reset(3)
        session.reset(5)
        assert np.array_equal(session.result().labels, automatic)
    finally:
        random_model.propagation = replace(random_model.propagation, score_threshold=0.5)


def test_session_caches_agree_with_a_fresh_computation(phantom_volume):
    """The session's two caches: the decoder's prepared memory (done once at opening) decodes
    exactly like the uncached decoder, and labels recomputed only on the slices a round reached
    equal labels recomputed on every slice."""
    from s2vnet.modeling.postprocess import scores_to_labels

    volume, _ = phantom_volume
    model = tiny_model(tiny_config(num_classes=8), seed=1).eval()
    model.propagation = replace(model.propagation, score_threshold=0.0)
    # The mask position code is zero-initialised: give it weights, so that a cache which dropped it
    # or added it twice would change the scores.
    torch.nn.init.normal_(model.decoder.mask_position_proj.weight, std=0.5)
    session = InteractiveSession(model, volume)
    # What the cache leaves out: the raw multi-scale features (prepared, then never read) and all
    # but one copy of the memory's position code (the same on every slice).
    assert session.features.multi_scale_features == []
    assert all(pos.stride(0) == 0 for pos in session.features.prepared.memory_pos)
    streamed = {}  # the same sweep on streamed features, decoded without a prepared memory
    session.predictor.automatic_scores(volume, on_slice=lambda z, scores: streamed.__setitem__(z, scores.to(torch.float16)))
    for z in range(volume.shape[0]):
        torch.testing.assert_close(session.auto_scores[:, z], streamed[z], atol=2e-3, rtol=0)
    before = session.result().labels
    session.click(6, 30, 30, 1)  # changes ~580 voxels of this model's result
    session.click(2, 20, 40, 0)
    after = session.run().labels
    assert session.rounds[-1].slices and not np.array_equal(after, before)
    fresh = np.stack([scores_to_labels(session.native_fused_scores(z)).cpu().numpy() for z in range(volume.shape[0])])
    assert np.array_equal(after, fresh)
    after[:] = 0  # results are copies: changing one does not change the session
    assert np.array_equal(session.result().labels, fresh)


def test_both_sweeps_in_one_batch_decode_like_one_slice_at_a_time(phantom_volume, monkeypatch):
    """A round decodes its two directions' slices as one padded batch; each slice must come out as
    if decoded alone (different numbers of tracks per direction exercise the padding)."""
    volume, _ = phantom_volume
    model = tiny_model(tiny_config(num_classes=8), seed=1).eval()
    model.propagation = replace(model.propagation, score_threshold=0.0)

    def round_scores():
        session = InteractiveSession(model, volume)
        for click in ((3, 30, 30, 1), (3, 20, 40, 2), (8, 25, 35, 1)):
            session.click(*click)
        session.run()
        return session.rounds[-1]

    batched = round_scores()
    one_at_a_time = InteractiveSession._decode_step
    monkeypatch.setattr(InteractiveSession, "_decode_step", lambda self, ready, *rest: [one_at_a_time(self, [sweep], *rest) for sweep in ready])
    single = round_scores()
    assert batched.slices == single.slices == set(range(volume.shape[0]))
    assert batched.scores.keys() == single.scores.keys() == {1, 2}
    for label in batched.scores:
        torch.testing.assert_close(batched.scores[label], single.scores[label], atol=2e-3, rtol=0)


def test_streamed_features_do_not_keep_a_chunk_alive(random_model, phantom_volume):
    """The slice a caller holds while the next chunk is encoded must not be a view of its chunk
    (or peak memory would be two chunks, growing with the slice batch rather than bounded by it)."""
    volume, _ = phantom_volume
    predictor = VolumePredictor(random_model, slice_batch_size=4)
    storages = {z: features.mask_features.untyped_storage().data_ptr()
                for z, features in predictor.stream_features(volume, list(range(volume.shape[0])))}
    for start in range(0, volume.shape[0], 4):
        assert storages[start] == storages[start + 1] == storages[start + 2]  # views of their chunk
        assert storages[start + 3] != storages[start]  # the chunk's last slice is a copy


def test_voxel_index_round_trip_on_a_non_ras_file(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[0, -2.0, 0, 10], [0, 0, 3.0, -5], [-1.5, 0, 0, 7], [0, 0, 0, 1]])  # permuted and flipped
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = read_volume(path)
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        zyx = original_to_canonical_index(volume.geometry, ijk)
        assert volume.array[zyx] == data[ijk]
        assert canonical_to_original_index(volume.geometry, zyx) == ijk
    with pytest.raises(InputError, match="outside"):
        original_to_canonical_index(volume.geometry, (4, 0, 0))


# ------------------------------------------------------------------ the prediction CLI
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A config file and random-initialised weights (enough to exercise I/O and geometry)."""
    from conftest import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


def _predict(config, weights, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools/predict.py"), "--config-file", str(config), *map(str, args), "MODEL.WEIGHTS", str(weights)],
        capture_output=True, text=True, timeout=600,
    )


def test_predict_on_the_real_ct_keeps_its_geometry(random_weights, real_ct_path, tmp_path):
    config, weights = random_weights
    output = tmp_path / "seg.nii.gz"
    result = _predict(config, weights, "--input", real_ct_path, "--output", output)
    assert result.returncode == 0, result.stderr
    written, source = nib.load(output), nib.load(real_ct_path)
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8


def test_predict_with_clicks_and_bad_clicks(random_weights, real_ct_path, tmp_path):
    config, weights = random_weights
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"rounds": [[{"ijk": [60, 50, 15], "label": 5}, {"ijk": [20, 30, 10], "label": 0}], [{"ijk": [61, 50, 16], "label": 5}]]}))
    output = tmp_path / "seg.nii.gz"
    result = _predict(config, weights, "--input", real_ct_path, "--output", output, "--clicks", clicks)
    assert result.returncode == 0, result.stderr
    assert nib.load(output).shape == nib.load(real_ct_path).shape
    clicks.write_text(json.dumps({"clicks": [{"ijk": [500, 50, 15], "label": 5}]}))
    result = _predict(config, weights, "--input", real_ct_path, "--output", tmp_path / "bad.nii.gz", "--clicks", clicks)
    assert result.returncode != 0 and "outside" in result.stderr
    clicks.write_text(json.dumps({"clicks": [{"ijk": [5, 5, 5], "label": "kidney_of_nowhere"}]}))
    result = _predict(config, weights, "--input", real_ct_path, "--output", tmp_path / "bad.nii.gz", "--clicks", clicks)
    assert result.returncode == 2 and "kidney_of_nowhere" in result.stderr


def test_interrupted_folder_run_resumes(random_weights, real_ct_path, tmp_path, monkeypatch):
    import importlib.util

    config, weights = random_weights
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = nib.load(real_ct_path)
    for i in range(3):
        nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj)[:, :, 10:20], source.affine, source.header), inputs / f"ct_{i}.nii.gz")
    outputs = tmp_path / "outputs"
    spec = importlib.util.spec_from_file_location("predict_tool", REPO / "tools/predict.py")
    predict_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict_tool)
    original = predict_tool.predict_case
    calls = []

    def interrupted(predictor, source, target, *args):
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed while working on the second volume
        calls.append(source.name)
        return original(predictor, source, target, *args)

    monkeypatch.setattr(predict_tool, "predict_case", interrupted)
    argv = ["--config-file", str(config), "--input", str(inputs), "--output", str(outputs), "MODEL.WEIGHTS", str(weights)]
    with pytest.raises(KeyboardInterrupt):
        predict_tool.main(argv)
    done = sorted(p.name for p in outputs.iterdir())
    assert done == ["ct_0.nii.gz"]  # only the finished volume, no partial file
    first = (outputs / "ct_0.nii.gz").stat().st_mtime_ns
    monkeypatch.setattr(predict_tool, "predict_case", original)
    assert predict_tool.main(argv) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["ct_0.nii.gz", "ct_1.nii.gz", "ct_2.nii.gz"]
    assert (outputs / "ct_0.nii.gz").stat().st_mtime_ns == first  # skipped, not redone


def test_automatic_sweeps_and_click_rounds_share_one_hand_over_rule(random_model, phantom_volume, monkeypatch):
    """Both inference paths hand centroids over through propagation.inference_hand_over: a rule
    replaced there (here: nothing is ever handed over) changes automatic and interactive alike,
    and equals turning propagation off."""
    from s2vnet.inference import volume_predictor
    from s2vnet.modeling.structures import CentroidOrigin

    volume, _ = phantom_volume
    seen = []

    def nothing_continues(outputs, tracks, num_learnable, aggregator, score_threshold, spawn_new=True):
        seen.append([origin for origin in tracks.origins])
        return random_model.empty_tracks()

    predictor = VolumePredictor(random_model)
    monkeypatch.setattr(volume_predictor, "inference_hand_over", nothing_continues)
    without_hand_over = predictor.predict_automatic(volume).labels
    assert len(seen) == volume.shape[0]
    session = InteractiveSession(predictor, volume)
    session.click(6, 30, 30, 3)
    session.run()
    assert [CentroidOrigin.CLICK] in seen  # the click round handed its click centroid through it too
    monkeypatch.undo()
    random_model.propagation = replace(random_model.propagation, enabled=False)
    try:
        assert np.array_equal(VolumePredictor(random_model).predict_automatic(volume).labels, without_hand_over)
    finally:
        random_model.propagation = replace(random_model.propagation, enabled=True)
