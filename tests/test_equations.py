"""Each paper equation against a hand computation on tiny tensors."""

import pytest
import torch

from s2vnet.modeling.interaction import ClickEncoder, adaptive_feature, fuse_rounds, identity_score
from s2vnet.modeling.postprocess import class_score_maps, resize_log_odds, scores_to_labels, upsample_log_odds
from s2vnet.modeling.propagation import RecurrentCentroidAggregator, Tracks, hand_over
from s2vnet.modeling.transformer_decoder.kmeans_attention import KMeansCrossAttention, kmeans_assignment, kmeans_update


def test_kmeans_assignment_is_a_hard_argmax_over_queries():
    # 3 queries x 4 pixels (eq. 3, assignment step).
    logits = torch.tensor([[[0.1, 2.0, -1.0, 0.3], [0.5, 1.0, -3.0, 0.2], [0.0, -1.0, 4.0, 0.9]]])
    expected = torch.tensor([[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]]], dtype=torch.float32)
    assert torch.equal(kmeans_assignment(logits), expected)
    # Every pixel belongs to exactly one query.
    assert torch.equal(kmeans_assignment(logits).sum(1), torch.ones(1, 4))


def test_kmeans_assignment_skips_padding_queries_and_has_no_gradient():
    logits = torch.tensor([[[5.0, 5.0], [1.0, -1.0]]], requires_grad=True)
    padding = torch.tensor([[True, False]])
    assignment = kmeans_assignment(logits, padding)
    assert torch.equal(assignment, torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))
    assert not assignment.requires_grad


def test_kmeans_update_is_the_sum_not_the_mean_of_assigned_values():
    assignment = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # query 0 owns pixels 0 and 1
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]]])
    update = kmeans_update(assignment, values)
    assert torch.allclose(update, torch.tensor([[[4.0, 6.0], [10.0, 20.0]]]))


def test_kmeans_cross_attention_layer_matches_hand_computation():
    torch.manual_seed(0)
    layer = KMeansCrossAttention(d_model=4)
    queries = torch.randn(1, 2, 4)
    memory = torch.randn(1, 3, 4)
    pos = torch.randn(1, 3, 4)
    logits = torch.tensor([[[1.0, -1.0, 2.0], [0.0, 3.0, 1.0]]])  # pixel 0 -> q0, 1 -> q1, 2 -> q0
    output = layer(queries, memory, pos, logits)
    values = layer.value_proj(memory + pos)[0]
    sums = torch.stack([values[0] + values[2], values[1]])  # eq. 3: A V
    expected = layer.norm(queries[0] + layer.output_proj(layer.update_norm(sums)))  # update step + residual
    assert torch.allclose(output[0], expected, atol=1e-6)


def test_kmeans_update_runs_in_float32_under_autocast():
    assignment = torch.ones(1, 1, 4096)
    values = torch.full((1, 4096, 2), 1.001, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        update = kmeans_update(assignment, values)
    assert update.dtype == torch.float32
    assert update[0, 0, 0].item() == pytest.approx(4096 * float(torch.tensor(1.001, dtype=torch.bfloat16)), rel=1e-6)


def test_adaptive_sampling_accumulates_geometrically():
    # Eq. 8: O_hat^r = O^r + beta O_hat^{r-1} = sum_i beta^(r-i) O^i.
    features = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([4.0, 4.0])]
    beta = 0.8
    accumulated = features[0]
    for feature in features[1:]:
        accumulated = adaptive_feature(feature, accumulated, beta)
    expected = features[2] + beta * features[1] + beta**2 * features[0]
    assert torch.allclose(accumulated, expected)
    assert torch.allclose(accumulated, torch.tensor([4.64, 5.6]))


def test_round_fusion_is_the_max_of_mask_times_class_score():
    # Eq. 9 for one class over three rounds on two pixels.
    masks = torch.tensor([[0.9, 0.2], [0.5, 0.8], [0.1, 0.1]])
    class_scores = torch.tensor([0.5, 0.9, 1.0])
    fused = fuse_rounds(masks * class_scores[:, None])
    assert torch.allclose(fused, torch.tensor([0.45, 0.72]))


def test_identity_score_uses_the_probability_of_the_identity_class():
    logits = torch.log(torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1]]))  # K = 3 classes + no-object
    mask_logits = torch.zeros(2, 1, 1)  # sigmoid = 0.5
    scores = identity_score(logits, mask_logits, torch.tensor([1, 0]))
    assert torch.allclose(scores.flatten(), torch.tensor([0.35, 0.1]))


def test_class_score_maps_take_the_best_query_per_class_and_drop_no_object():
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.6, 0.3]]))  # 2 classes + no-object
    masks = torch.tensor([[[10.0, -10.0]], [[-10.0, 10.0]]])  # query 0 on pixel 0, query 1 on pixel 1
    scores = class_score_maps(logits, masks)
    assert scores.shape == (2, 1, 2)
    assert scores[0, 0, 0] == pytest.approx(0.8, abs=1e-3) and scores[1, 0, 1] == pytest.approx(0.6, abs=1e-3)


def test_upsampling_interpolates_log_odds_so_a_one_cell_region_keeps_its_pixels():
    # Class 0 claims one mask cell (what a corrective click's centroid often does); class 1 scores
    # 0.9 everywhere. After the 2x resize to the input grid, the cell's pixels must stay class 0:
    # sigmoid(bilinear logit) ~ 0.96 there. Interpolating the scores gave 0.57 and lost them.
    scores = torch.full((2, 5, 5), 0.01)
    scores[0, 2, 2] = 1.0
    scores[1] = 0.9
    labels = scores_to_labels(upsample_log_odds(scores, (10, 10)).sigmoid())
    assert (labels[4:6, 4:6] == 0).all()
    assert (labels[:3] == 1).all() and (labels[7:] == 1).all()  # the region does not grow beyond its cell


def test_upsampling_keeps_scores_in_range_and_constant_maps_constant():
    scores = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.3, 0.3], [0.3, 0.3]]], dtype=torch.float16)
    resized = upsample_log_odds(scores, (4, 4)).sigmoid()
    assert resized.dtype == torch.float32 and resized.shape == (2, 4, 4)
    assert ((resized >= 0) & (resized <= 1)).all()
    assert torch.allclose(resized[1], torch.full((4, 4), 0.3), atol=1e-4)
    batched = upsample_log_odds(scores[None].expand(3, -1, -1, -1), (4, 4)).sigmoid()
    assert batched.shape == (3, 2, 4, 4) and torch.equal(batched[2], resized)


def test_labels_from_log_odds_are_the_labels_from_scores():
    # Inference labels are the argmax of the resized log-odds, skipping the full-resolution
    # sigmoid; being monotonic, it cannot change the winner.
    torch.manual_seed(0)
    scores = torch.rand(8, 16, 16) ** 3
    log_odds = upsample_log_odds(scores, (64, 48))
    assert log_odds.shape == (8, 64, 48)
    assert torch.equal(scores_to_labels(log_odds), scores_to_labels(upsample_log_odds(scores, (64, 48)).sigmoid()))
    twice = upsample_log_odds(upsample_log_odds(scores, (64, 48)).sigmoid(), (32, 24)).sigmoid()
    assert torch.allclose(resize_log_odds(log_odds, (32, 24)).sigmoid(), twice, atol=1e-5)


def test_aggregator_shapes_and_recurrence():
    torch.manual_seed(0)
    d_model, slots = 8, 2
    aggregator = RecurrentCentroidAggregator(d_model, nheads=2, dim_feedforward=16, memory_slots=slots).eval()
    centroids = [torch.randn(3, d_model) for _ in range(3)]
    memory = aggregator.initial(3)
    assert memory.shape == (3, slots, d_model)
    for c in centroids:
        query, new_memory = aggregator(c, memory)
        assert query.shape == (3, d_model) and new_memory.shape == (3, slots, d_model)
        # Eq. 11 reads the memory BEFORE this slice's centroid is written into it.
        attended = aggregator.read_attn(c[:, None], memory, memory, need_weights=False)[0][:, 0]
        assert torch.allclose(query, c + attended, atol=1e-6)
        # Eq. 10: H^t = FFN(SelfAttn([H^{t-1}; C^t])), only the memory positions kept.
        tokens = torch.cat([memory, c[:, None]], 1)
        attended_tokens = aggregator.write_norm(tokens + aggregator.write_attn(tokens, tokens, tokens, need_weights=False)[0])
        kept = attended_tokens[:, :slots]
        assert torch.allclose(new_memory, aggregator.write_ffn_norm(kept + aggregator.write_ffn(kept)), atol=1e-6)
        memory = new_memory
    # The memory carries history: changing the first centroid changes the query two slices later.
    def query_on_third_slice(first):
        memory = aggregator.initial(3)
        for c in (first, centroids[1]):
            memory = aggregator(c, memory)[1]
        return aggregator(centroids[2], memory)[0]

    assert not torch.allclose(query_on_third_slice(centroids[0]), query_on_third_slice(centroids[0] + 1.0))


def test_aggregator_with_one_slot_reads_a_projection_of_the_memory():
    """With a single memory vector the cross-attention softmax is 1: the read is W_o W_v H."""
    torch.manual_seed(1)
    aggregator = RecurrentCentroidAggregator(4, nheads=1, dim_feedforward=8, memory_slots=1).eval()
    centroid, memory = torch.randn(2, 4), torch.randn(2, 1, 4)
    attn = aggregator.read_attn
    w_v = attn.in_proj_weight[8:12]
    b_v = attn.in_proj_bias[8:12]
    projected = (memory[:, 0] @ w_v.T + b_v) @ attn.out_proj.weight.T + attn.out_proj.bias
    assert torch.allclose(aggregator.read(centroid, memory), centroid + projected, atol=1e-6)


def test_aggregator_cost_is_constant_per_slice():
    aggregator = RecurrentCentroidAggregator(8, nheads=2, dim_feedforward=16, memory_slots=1)
    memory = aggregator.initial(2)
    for _ in range(50):
        _, memory = aggregator(torch.randn(2, 8), memory)
    assert memory.shape == (2, 1, 8)  # no memory bank growing with the slices


def test_hand_over_without_aggregation_passes_centroids_unchanged_and_can_detach():
    centroids = torch.randn(2, 4, requires_grad=True)
    tracks = hand_over(centroids, torch.tensor([1, 2]), torch.tensor([0, 0]), None, None)
    assert tracks.queries is centroids  # eq. 6: C^{t+1} = C_hat^t
    detached = hand_over(centroids, torch.tensor([1, 2]), torch.tensor([0, 0]), None, None, detach=True)
    assert not detached.queries.requires_grad


def test_tracks_padding_keeps_order_and_gradient():
    queries = torch.randn(3, 2, requires_grad=True)
    tracks = Tracks(queries, torch.tensor([1, 2, 3]), torch.tensor([1, 0, 1]))
    extra, padding, slot = tracks.padded(batch_size=2)
    assert extra.shape == (2, 2, 2)
    assert slot.tolist() == [0, 0, 1]
    assert padding.tolist() == [[False, True], [False, False]]
    assert torch.equal(extra[1, 0], queries[0]) and torch.equal(extra[1, 1], queries[2])
    extra.sum().backward()
    assert torch.equal(queries.grad, torch.ones(3, 2))


def test_click_encoder_samples_bilinearly_at_the_pixel_centre():
    encoder = ClickEncoder(["res2"], {"res2": 1}, hidden_dim=4, d_model=2, num_classes=3, use_position=False)
    feature = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # the stride-4 map of an 8x8 input
    centre = encoder.sample({"res2": feature}, torch.tensor([0]), torch.tensor([[4, 4]]), (8, 8))
    # Input pixel (4, 4) has centre 4.5/8 = 0.5625 -> feature coordinate 0.5625*2 - 0.5 = 0.625 in both axes.
    w = 0.625
    expected = (1 - w) * (1 - w) * 1 + (1 - w) * w * 3 + w * (1 - w) * 5 + w * w * 7
    assert centre.item() == pytest.approx(expected, abs=1e-6)
    assert encoder(centre, torch.tensor([1])).shape == (1, 2)


def test_click_position_code_matches_the_map_code():
    from s2vnet.modeling.position_encoding import PositionEmbeddingSine

    encoding = PositionEmbeddingSine(8)
    code_map = encoding(torch.zeros(1, 1, 16, 16))[0]  # the code of map pixel (i, j) is at ((i + 1) / 16)
    point = encoding.encode_points(torch.tensor([[5 / 16, 11 / 16]]))[0]
    assert torch.allclose(point, code_map[:, 4, 10], atol=1e-4)
    encoder = ClickEncoder(["res2"], {"res2": 3}, hidden_dim=8, d_model=16, num_classes=3, use_position=True)
    features = torch.randn(2, 3)
    label = torch.tensor([1])
    near, far = encoder(features[:1], label, torch.tensor([[0.2, 0.2]])), encoder(features[:1], label, torch.tensor([[0.8, 0.7]]))
    assert not torch.allclose(near, far)  # the centroid knows where the click was


def test_click_centroid_knows_its_class():
    """The same pixel clicked as two classes gives two centroids that differ by exactly the
    difference of the two classes' reserved-centre embeddings (eq. 7 + class reservation, §3.3)."""
    encoder = ClickEncoder(["res2"], {"res2": 3}, hidden_dim=8, d_model=16, num_classes=3, use_position=True)
    feature, position = torch.randn(1, 3), torch.tensor([[0.4, 0.6]])
    as_organ = encoder(feature, torch.tensor([2]), position)
    as_background = encoder(feature, torch.tensor([0]), position)
    expected = encoder.class_embed.weight[2] - encoder.class_embed.weight[0]
    assert torch.allclose(as_organ - as_background, expected[None], atol=1e-6)
    assert not torch.allclose(as_organ, as_background)


def test_click_point_loss_is_the_bce_of_each_centroids_mask_at_its_own_click():
    from s2vnet.modeling.criterion import click_point_loss

    masks = torch.zeros(2, 3, 2, 2)
    masks[0, 2, 0, 1] = 2.0  # clip 0, query row 2: logit 2 at pixel (y=0, x=1)
    masks[1, 1, 1, 0] = -1.0  # clip 1, query row 1: logit -1 at pixel (y=1, x=0)
    batch_index, rows = torch.tensor([0, 1]), torch.tensor([2, 1])
    positions = torch.tensor([[0.25, 0.75], [0.75, 0.25]])  # the centres of those pixels, (y, x)
    loss = click_point_loss(masks, batch_index, rows, positions)
    expected = (torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(1.0))) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    empty = click_point_loss(masks.requires_grad_(), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    assert empty.item() == 0.0 and empty.requires_grad  # stays in the graph (DDP)


def test_fused_click_loss_scores_the_labels_eq9_makes_and_trains_only_where_a_click_decides():
    """The cross-entropy of the eq. 9-fused label map, by hand on a 1 x 3 mask grid (resized to an
    input of the same size, i.e. not at all): background, class 1 and class 2 (+ "no object")."""
    from s2vnet.modeling.criterion import fused_click_loss

    sharp = 20.0  # a query's class logit: its class probability is 1 - 3 exp(-20)
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 0] = logits[0, 1, 1] = logits[0, 2, 2] = sharp  # rows: background, class 1, a click of class 2
    masks = torch.tensor([[[[3.0, 3.0, -3.0]], [[-3.0, -3.0, 3.0]], [[-3.0, 4.0, 5.0]]]]).requires_grad_()
    gt = torch.tensor([[[0, 2, 1]]])  # the click is right at pixel 1 and breaks pixel 2 (class 1 there)
    padding = torch.zeros(1, 3, dtype=torch.bool)
    args = (padding, torch.tensor([2]), torch.tensor([0]), torch.tensor([2]), gt, (1, 3), 255)
    loss = fused_click_loss(logits, masks, *args)

    probs = logits[0].softmax(-1)
    score = probs[:, :3].T[:, :, None] * masks[0, :, 0].detach().sigmoid()[None]  # (class, query, pixel)
    fused = score.amax(1)  # eq. 9: per class the max over the automatic queries and the click
    log_odds = torch.logit(fused, eps=1e-6)
    ce = -log_odds.log_softmax(0)[gt[0, 0], torch.arange(3)]
    # Pixel 0 (background, and predicted so) is outside the clicked class's region.
    assert loss.item() == pytest.approx(ce[1:].mean().item(), rel=1e-5)

    loss.backward()
    click = masks.grad[0, 2, 0]
    assert click[0] == 0  # outside the region
    assert click[1] < 0 and click[2] > 0  # claim the voxel it fixes, give back the one it breaks
    assert masks.grad[0, :2].abs().sum() == 0  # the automatic scores are round 0: fixed

    # A click of class 1 below the automatic class-1 score everywhere decides nothing: no gradient.
    weak = masks.detach().clone()
    weak[0, 2] = -5.0
    weak.requires_grad_()
    logits_1 = logits.clone()
    logits_1[0, 2] = torch.tensor([0.0, sharp, 0.0, 0.0])
    fused_click_loss(logits_1, weak, padding, torch.tensor([2]), torch.tensor([0]), torch.tensor([1]), gt, (1, 3), 255).backward()
    assert weak.grad.abs().sum() == 0
    # Without click centroids the loss is 0 and still in the graph (DDP).
    empty = fused_click_loss(logits, masks, padding, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, dtype=torch.long), gt, (1, 3), 255)
    assert empty.item() == 0.0 and empty.requires_grad
