"""Model behaviour: hand-over rules, gradient flow through propagation, every parameter trained."""
import numpy as np
import pytest
import torch

from conftest import synthetic_clip, tiny_config, tiny_model
from s2vnet.inference.volume_predictor import VolumePredictor
from s2vnet.modeling.criterion import SliceTargets
from s2vnet.modeling.click_simulation import ClickSimulationSettings, TrainingClickSimulator
from s2vnet.modeling.propagation import training_hand_over
from s2vnet.modeling.structures import CentroidOrigin, Tracks


def _targets(labels):
    labels = torch.tensor(labels)
    return SliceTargets(labels, torch.zeros(len(labels), 4, 4), torch.ones(4, 4), torch.zeros(0, dtype=torch.int64))


def test_training_hand_over_passes_only_foreground_centroids():
    model = tiny_model()
    n = model.decoder.num_queries
    embeddings = torch.randn(1, n + 1, 32)
    outputs = {"query_embeddings": embeddings, "track_slot": torch.tensor([0])}
    # Segments: background (0), class 2, class 3. Learnable query 1 matched to background, query 4 to
    # class 2; the extra query (a track of class 3) matched to its segment.
    targets = [_targets([0, 2, 3])]
    matches = [(torch.tensor([1, 4, n]), torch.tensor([0, 1, 2]))]
    previous = Tracks(torch.randn(1, 32), torch.tensor([3]), torch.tensor([0]), model.aggregator.initial(1))
    tracks = training_hand_over(outputs, matches, [t.labels for t in targets], previous, n, model.aggregator)
    assert sorted(tracks.labels.tolist()) == [2, 3]
    assert 0 not in tracks.labels.tolist()
    # The continuing track keeps its origin; the new identity was started by a learnable query.
    assert dict(zip(tracks.labels.tolist(), tracks.origins)) == {3: CentroidOrigin.LEARNABLE, 2: CentroidOrigin.LEARNABLE}
    clicked = Tracks(previous.queries, previous.labels, previous.batch_index, previous.memory, [CentroidOrigin.CLICK])
    tracks = training_hand_over(outputs, matches, [t.labels for t in targets], clicked, n, model.aggregator)
    assert dict(zip(tracks.labels.tolist(), tracks.origins)) == {3: CentroidOrigin.CLICK, 2: CentroidOrigin.LEARNABLE}


def test_inference_hand_over_keeps_confident_foreground_only():
    model = tiny_model().eval()
    predictor = VolumePredictor(model)
    n, k = model.decoder.num_queries, model.num_classes
    logits = torch.full((1, n + 1, k + 1), -10.0)
    logits[0, :, k] = 10.0  # everything "no object" by default
    logits[0, 0, 0], logits[0, 0, k] = 10.0, -10.0  # query 0: confident background -> never handed over
    logits[0, 1, 2], logits[0, 1, k] = 10.0, -10.0  # query 1: confident class 2 -> new identity
    logits[0, 2, 3], logits[0, 2, k] = 0.0, 0.2  # query 2: class 3 below the threshold
    logits[0, n, 1], logits[0, n, k] = 10.0, -10.0  # the class-1 track is still confident -> continues
    masks = torch.full((1, n + 1, 8, 8), -5.0)
    masks[..., 2:5, 2:5] = 5.0  # every query has a non-empty mask
    outputs = {
        "pred_logits": logits,
        "pred_masks": masks,
        "query_embeddings": torch.randn(1, n + 1, 32),
        "track_slot": torch.tensor([0]),
    }
    previous = Tracks(torch.randn(1, 32), torch.tensor([1]), torch.tensor([0]), model.aggregator.initial(1))
    tracks = predictor.continue_tracks(outputs, previous, spawn_new=True)
    assert sorted(tracks.labels.tolist()) == [1, 2]
    # A confident centroid whose cluster is empty is dropped (and spawns nothing).
    masks[0, n] = -5.0
    masks[0, 1] = -5.0
    assert predictor.continue_tracks(outputs, previous, spawn_new=True).labels.tolist() == []
    # A track whose class is no longer predicted dies.
    masks[0, n, 2:5, 2:5] = 5.0
    logits[0, n, 1] = -10.0
    assert predictor.continue_tracks(outputs, previous, spawn_new=False).labels.tolist() == []


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_of_slice_three_loss_reaches_slice_one_decoder(detach):
    cfg = tiny_config(**{"MODEL.S2VNET.PROPAGATION.DETACH": detach, "MODEL.S2VNET.INTERACTION.CLICK_PROB": 0.0})
    model = tiny_model(cfg).train()
    captured, calls = {}, {"decoder": 0, "criterion": 0}
    decoder_forward = model.decoder.forward

    def recording_decoder(*args, **kwargs):
        outputs = decoder_forward(*args, **kwargs)
        if calls["decoder"] == 0:  # slice 1
            outputs["query_embeddings"].retain_grad()
            captured["slice1"] = outputs["query_embeddings"]
        calls["decoder"] += 1
        return outputs

    criterion_forward = model.criterion.forward

    def slice_three_only(outputs, targets):
        losses, matches = criterion_forward(outputs, targets)
        calls["criterion"] += 1
        if calls["criterion"] < 3:  # slices 1 and 2 contribute nothing
            losses = {k: v * 0.0 for k, v in losses.items()}
        return losses, matches

    model.decoder.forward = recording_decoder
    model.criterion.forward = slice_three_only
    losses = model([synthetic_clip(seed=0)])
    sum(losses.values()).backward()
    gradient = captured["slice1"].grad
    assert calls["decoder"] == 3
    if detach:
        assert gradient is None or gradient.abs().sum() == 0
    else:
        # Only the centroids handed over carry slice 3's gradient back to slice 1.
        assert gradient is not None and gradient.abs().sum() > 0


@pytest.mark.parametrize("click_prob", [0.0, 1.0])
def test_every_parameter_gets_a_gradient_with_or_without_clicks(click_prob):
    model = tiny_model(tiny_config(**{"MODEL.S2VNET.INTERACTION.CLICK_PROB": click_prob})).train()
    losses = model([synthetic_clip(seed=1), synthetic_clip(seed=2)])
    sum(losses.values()).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_the_fused_loss_follows_click_identities_through_the_hand_over(monkeypatch):
    """loss_fused scores every slice a click-initialised identity reaches: the clicked slice and,
    handed over, the next ones; identities the learnable queries start are not clicks."""
    from s2vnet.modeling import meta_arch

    model = tiny_model(tiny_config(**{"MODEL.S2VNET.INTERACTION.CLICK_PROB": 1.0, "MODEL.S2VNET.INTERACTION.FUSED_LOSS_WEIGHT": 1.0})).train()
    seen = []
    original = meta_arch.fused_click_loss

    def spy(pred_logits, pred_masks, padding, rows, batch_index, labels, *args):
        seen.append(len(rows))
        return original(pred_logits, pred_masks, padding, rows, batch_index, labels, *args)

    monkeypatch.setattr(meta_arch, "fused_click_loss", spy)
    losses = model([synthetic_clip(seed=1), synthetic_clip(seed=2)])
    assert len(seen) == 3 and seen[0] > 0 and seen[1] > 0  # one call per slice; the clicked identities live on
    assert losses["loss_fused"] > 0
    # Without clicks there is nothing to fuse: 0, in the graph.
    model = tiny_model(tiny_config(**{"MODEL.S2VNET.INTERACTION.CLICK_PROB": 0.0, "MODEL.S2VNET.INTERACTION.FUSED_LOSS_WEIGHT": 1.0})).train()
    seen.clear()
    losses = model([synthetic_clip(seed=1)])
    assert seen == [0, 0, 0] and losses["loss_fused"].item() == 0.0 and losses["loss_fused"].requires_grad


def test_the_simulated_user_clicks_with_its_own_seeded_stream():
    """The training-time user: its first round is :func:`initial_clicks` drawn from its own RNG
    (after choosing the classes and the number of rounds), a corrective round clicks against the
    labels the model shows, and a fixed torch seed repeats the clicks exactly."""
    from s2vnet.data.clicks import corrective_clicks, initial_clicks

    clip = synthetic_clip(seed=1)
    labels = clip["sem_seg"][:1].numpy()
    present = sorted(int(c) for c in np.unique(labels) if 0 < c < 255)
    settings = ClickSimulationSettings(click_prob=1.0, max_rounds=3, jitter=0.3)

    def simulate():
        torch.manual_seed(7)
        simulator = TrainingClickSimulator(settings, num_classes=4, ignore_label=255)
        reference = np.random.default_rng()
        reference.bit_generator.state = simulator.rng.bit_generator.state
        shown = np.zeros_like(labels)  # the model shows background everywhere
        return simulator, reference, list(simulator.rounds(labels, [present], lambda: shown))

    simulator, reference, rounds = simulate()
    assert [reference.random() < 1.0 for _ in present] == [True] * len(present)
    num_rounds = int(reference.integers(1, settings.max_rounds + 1))
    assert len(rounds) == num_rounds
    options = dict(rng=reference, jitter_fraction=settings.jitter, ignore_label=255)
    assert rounds[0] == [initial_clicks(labels[0], present, **options)]
    for later in rounds[1:]:
        assert later == [corrective_clicks(labels[0], np.zeros_like(labels[0]), [1, 2, 3], **options)]
    assert simulator.rng.bit_generator.state == reference.bit_generator.state
    assert simulate()[2] == rounds
    # Nobody clicked: no round, and the click probability decides who is clicked.
    never = TrainingClickSimulator(ClickSimulationSettings(click_prob=0.0), num_classes=4, ignore_label=255)
    assert list(never.rounds(labels, [present], lambda: labels)) == []


def test_every_parameter_gets_a_gradient_on_a_clip_without_foreground():
    model = tiny_model().train()
    clip = synthetic_clip(seed=3)
    clip["sem_seg"][clip["sem_seg"] != 255] = 0
    from s2vnet.data.clip_mapper import instances_from_sem_seg

    clip["instances"] = [instances_from_sem_seg(s, 255) for s in clip["sem_seg"]]
    losses = model([clip])
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_training_reduces_the_loss_on_a_fixed_clip():
    torch.manual_seed(0)
    model = tiny_model(tiny_config(**{"MODEL.S2VNET.INTERACTION.CLICK_PROB": 0.0})).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clips = [synthetic_clip(seed=4), synthetic_clip(seed=5)]
    history = []
    for _ in range(25):
        losses = model(clips)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(float(total.detach()))
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:3])


def test_predictions_on_ignored_pixels_do_not_change_the_loss():
    """Crop padding (the ignore label) is excluded from the mask losses and the matching costs."""
    from s2vnet.modeling.criterion import CriterionSettings, SetCriterion
    from s2vnet.modeling.matcher import HungarianMatcher

    settings = CriterionSettings(
        num_classes=3, num_learnable_queries=4, class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
        num_points=512, oversample_ratio=3.0, importance_sample_ratio=0.0,
    )
    criterion = SetCriterion(settings, HungarianMatcher(num_points=512))
    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[10:30, 10:30] = 1
    valid = torch.ones(64, 64)
    valid[:, 48:] = 0  # padding on the right
    masks = torch.stack([(labels == c).float() for c in (0, 1)])
    target = SliceTargets(torch.tensor([0, 1]), masks * valid, valid, torch.zeros(0, dtype=torch.int64))
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 4, 4), "pred_masks": torch.randn(1, 4, 16, 16), "aux_outputs": [],
               "query_padding_mask": torch.zeros(1, 4, dtype=torch.bool)}
    torch.manual_seed(1)
    reference, _ = criterion(outputs, [target])
    perturbed = dict(outputs, pred_masks=outputs["pred_masks"].clone())
    perturbed["pred_masks"][..., 13:] += 50.0  # only where every sample point is ignored (x >= 50)
    torch.manual_seed(1)
    again, _ = criterion(perturbed, [target])
    assert {k: float(v) for k, v in again.items()} == pytest.approx({k: float(v) for k, v in reference.items()}, rel=1e-6)
    # The same perturbation on valid pixels does change it.
    moved = dict(outputs, pred_masks=outputs["pred_masks"].clone())
    moved["pred_masks"][..., :8] += 50.0
    torch.manual_seed(1)
    changed, _ = criterion(moved, [target])
    assert float(changed["loss_mask"]) != pytest.approx(float(reference["loss_mask"]), rel=1e-3)
