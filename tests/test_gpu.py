"""CUDA paths the CPU suite never runs (marker ``gpu``): mixed-precision training steps, inference in
autocast against fp32, checkpoints saved on the GPU, a 2-process NCCL step.

``scripts/gpu_check.sh`` runs them (docs/gpu.md) and sets:

* ``S2VNET_GPU_CHECK_DEVICE``: ``cuda`` (the default) or ``cpu`` for the check's dry run, where the
  same tests run on the CPU so that they cannot rot: inference there is fp32 whatever the autocast
  setting (the predictor's rule on CPU), so the comparisons only exercise the code, and the DDP
  step runs over gloo;
* ``S2VNET_GPU_CHECK_CONFIG``: the model of the training, encoder, checkpoint and DDP tests (default:
  the paper's Swin-B, ``configs/word/s2vnet_swinb.yaml``);
* ``S2VNET_GPU_CHECK_TINY=1`` (the check's ``--tiny``): 64 x 64 clips and slices instead of the
  config's crop size (512 for Swin-B) and 256 x 256.

Without CUDA every test skips, saying so, unless the dry run asked for ``cpu``.
"""
import contextlib
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # DDP workers (spawned) import this module by name

REPO = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("S2VNET_GPU_CHECK_DEVICE", "cuda")
CONFIG = os.environ.get("S2VNET_GPU_CHECK_CONFIG", str(REPO / "configs" / "word" / "s2vnet_swinb.yaml"))
ON_GPU = DEVICE.startswith("cuda")
TINY = os.environ.get("S2VNET_GPU_CHECK_TINY") == "1"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        ON_GPU and not torch.cuda.is_available(),
        reason="CUDA is absent: the gpu tests run on a GPU machine (scripts/gpu_check.sh, docs/gpu.md)",
    ),
]

# Unit roundoff of each autocast dtype: bf16 keeps 8 significant bits, fp16 11.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
# Inference in autocast against fp32, for a model whose outputs are decisive (see decisive_model):
# (least share of voxels with the same label, largest relative L2 error of the class scores). The
# pass has discrete steps (k-means' hard pixel assignment, the label argmax, the hand-over
# threshold), so a few roundoffs flip the pixels that sit at a tie; their number, not the roundoff,
# sets the score error. Measured on CPU (autocast emulated) with that model: bf16 99.96-99.99 % of
# labels equal, scores 0.2 % off (2.6 % with a model trained 60 steps on other phantoms); fp16
# 99.998-100 %, 0.03 %. The bounds leave room for another model and other kernels; a wrong cast or an
# overflow (scores off by tens of %, NaN) fails them.
PIPELINE_TOLERANCE = {"bfloat16": (0.99, 0.05), "float16": (0.999, 0.01)}


# ------------------------------------------------------------------ helpers
def paper_config(*overrides: str):
    """The config under test (S2VNET_GPU_CHECK_CONFIG) on the device under test, with overrides."""
    from s2vnet.config import load_config

    sizes = ["INPUT.IMAGE_SIZE", "64"] if TINY else []
    return load_config(CONFIG, ["MODEL.DEVICE", DEVICE] + sizes + list(overrides))


def build(cfg, seed: int = 0):
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401  (registers the meta architecture)

    torch.manual_seed(seed)
    return build_model(cfg)


def phantom_volume(slices: int, size: int, seed: int = 0):
    """A normalised CT phantom (uint8 volume, labels) of ``slices`` x ``size`` x ``size``."""
    from s2vnet.data.intensity import normalize_intensity
    from s2vnet.data.phantom import generate_phantom

    phantom = generate_phantom(seed, (slices, size, size))
    return normalize_intensity(phantom.image.astype(np.float32), "CT"), phantom.labels


def phantom_clips(volume: np.ndarray, labels: np.ndarray, starts):
    """Training clips (3 slices each, as ClipDatasetMapper makes them) starting at ``starts``."""
    from s2vnet.data.clip_mapper import instances_from_sem_seg

    clips = []
    for z in starts:
        sem_seg = torch.from_numpy(labels[z : z + 3].astype(np.int64))
        clips.append({"image": torch.from_numpy(volume[z : z + 3]), "sem_seg": sem_seg, "instances": [instances_from_sem_seg(s, 255) for s in sem_seg]})
    return clips


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double().cpu(), reference.double().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


@contextlib.contextmanager
def exact_fp32():
    """fp32 references without TF32: cuDNN convolutions use it by default on Ampere and newer
    (about 1e-3 relative error, more than fp16's roundoff)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def predictor_in(model, amp_dtype: str):
    from s2vnet.inference.volume_predictor import VolumePredictor

    predictor = VolumePredictor(model, slice_batch_size=4, amp_dtype=amp_dtype)
    if ON_GPU:  # the test must really run in that precision (bf16 falls back to fp16 on pre-Ampere GPUs)
        assert predictor.autocast_dtype == getattr(torch, amp_dtype), f"asked for {amp_dtype}, runs {predictor.autocast_dtype}"
    return predictor


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_a_training_step_in_mixed_precision(amp_dtype, tmp_path):
    """The trainer's own step (AutocastTrainer): finite losses, a finite gradient for every
    parameter, and with fp16 a gradient scaler whose state survives a checkpoint."""
    from detectron2.utils.events import EventStorage

    from s2vnet.engine.trainer import AutocastTrainer, build_optimizer

    # Every class clicked: the click encoder, eq. 7-9 and the fused loss run in autocast too.
    cfg = paper_config("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", amp_dtype, "MODEL.S2VNET.INTERACTION.CLICK_PROB", "1.0")
    model = build(cfg)
    volume, labels = phantom_volume(8, cfg.INPUT.IMAGE_SIZE)
    trainer = AutocastTrainer(model, itertools.repeat(phantom_clips(volume, labels, [2, 4])), build_optimizer(cfg, model), getattr(torch, amp_dtype))
    scaler = trainer.grad_scaler
    assert scaler.is_enabled() == (amp_dtype == "float16")
    with EventStorage(0) as storage:
        # fp16: the scaler starts at 2^16 and skips the steps whose gradients overflow, halving the
        # scale each time; the check is made on the first step it takes.
        for iteration in range(10):
            storage.iter = trainer.iter = iteration
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            trainer.run_step()  # raises FloatingPointError on a non-finite total loss
            losses = {name: value for name, (value, _) in storage.latest().items() if name.startswith("loss_") or name == "total_loss"}
            assert losses and all(math.isfinite(v) for v in losses.values()), losses
            if not scaler.is_enabled() or scaler.get_scale() >= scale:
                break
        else:
            pytest.fail(f"the fp16 gradient scaler skipped 10 steps in a row (scale now {scaler.get_scale()})")
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"{len(missing)} parameters got no gradient, e.g. {missing[:5]}"
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == [], f"non-finite gradients in {bad[:5]}"
    if scaler.is_enabled():
        path = tmp_path / "trainer.pth"
        torch.save(trainer.state_dict(), path)
        restored = AutocastTrainer(model, [], build_optimizer(cfg, model), torch.float16)
        restored.load_state_dict(torch.load(path, map_location=DEVICE, weights_only=False))
        assert restored.grad_scaler.get_scale() == scaler.get_scale()


# ------------------------------------------------------------------ inference in autocast
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_the_encoder_in_autocast_matches_fp32(amp_dtype):
    """Backbone and pixel decoder (continuous: no discrete step) within 16 unit roundoffs of fp32,
    relative L2 error of every feature map. Measured 3 to 7 roundoffs on CPU (Swin-B and the tiny
    ResNet, bf16 and fp16); a wrong cast or an accumulation in half precision is far beyond."""
    cfg = paper_config()
    model = build(cfg).eval()
    volume, _ = phantom_volume(8, 64 if TINY else 256)
    with exact_fp32():
        reference = predictor_in(model, "float32").encode_slices(volume, [3, 4])
    features = predictor_in(model, amp_dtype).encode_slices(volume, [3, 4])
    pairs = [("mask_features", features.mask_features, reference.mask_features)]
    pairs += [(f"multi_scale_features[{i}]", a, b) for i, (a, b) in enumerate(zip(features.multi_scale_features, reference.multi_scale_features))]
    pairs += [(f"click_features[{k}]", features.click_features[k], reference.click_features[k]) for k in reference.click_features or {}]
    bound = 16 * UNIT_ROUNDOFF[amp_dtype]
    errors = {name: relative_error(a, b) for name, a, b in pairs}
    assert all(torch.isfinite(a).all() for _, a, _ in pairs)
    assert max(errors.values()) <= bound, f"relative errors {errors} (bound {bound:.2e})"


@pytest.fixture(scope="module")
def decisive_model():
    """The tiny model (tests/conftest.py) trained briefly on the phantom it is then run on, so that
    its outputs are decisive. With random weights nearly every pixel is a near-tie between classes
    and queries: there, fp32 with +-1 grey level of noise on a tenth of the voxels already changes
    36 % of Swin-B's labels, and no tolerance could tell a bug from chance. 80 steps on the GPU
    (a few seconds); 2 in the CPU dry run, whose comparisons are fp32 against fp32 anyway."""
    from conftest import tiny_config

    cfg = tiny_config(num_classes=8, **{"MODEL.DEVICE": DEVICE, "MODEL.S2VNET.INTERACTION.CLICK_PROB": 0.5})
    model = build(cfg).train()
    volume, labels = phantom_volume(16, 64, seed=5)
    clips = phantom_clips(volume, labels, range(1, 13, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(80 if ON_GPU else 2):
        losses = model([clips[i] for i in rng.choice(len(clips), 2, replace=False)])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.eval(), volume, labels


def _session_outputs(model, volume, labels, amp_dtype: str):
    """(automatic labels, automatic scores, labels and fused scores after one click round)."""
    from s2vnet.data.clicks import initial_clicks
    from s2vnet.inference.session import InteractiveSession

    predictor = predictor_in(model, amp_dtype)
    automatic = predictor.predict_automatic(volume, return_scores=True)
    session = InteractiveSession(predictor, volume)
    for click in initial_clicks(labels, list(range(1, model.num_classes))):
        session.click(click.z, click.y, click.x, click.label)
    refined = session.run()
    return automatic.labels, automatic.scores, refined.labels, session.fused_probabilities()


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_automatic_and_interactive_inference_in_autocast_match_fp32(decisive_model, amp_dtype):
    """Labels agreement and score error within PIPELINE_TOLERANCE, for the automatic pass and for
    a click round (one click per organ), against the same passes in fp32."""
    model, volume, labels = decisive_model
    with exact_fp32():
        reference = _session_outputs(model, volume, labels, "float32")
    result = _session_outputs(model, volume, labels, amp_dtype)
    least_agreement, largest_error = PIPELINE_TOLERANCE[amp_dtype]
    for mode, (our_labels, our_scores, ref_labels, ref_scores) in (
        ("automatic", (result[0], result[1], reference[0], reference[1])),
        ("interactive", (result[2], result[3], reference[2], reference[3])),
    ):
        scores, ref = torch.from_numpy(our_scores.astype(np.float32)), torch.from_numpy(ref_scores.astype(np.float32))
        assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1, mode
        agreement, error = float(np.mean(our_labels == ref_labels)), relative_error(scores, ref)
        assert agreement >= least_agreement and error <= largest_error, (
            f"{mode} in {amp_dtype}: {100 * agreement:.2f} % of labels as in fp32 (at least {100 * least_agreement:.1f} %), "
            f"scores {100 * error:.2f} % off (at most {100 * largest_error:.0f} %)"
        )


# ------------------------------------------------------------------ checkpoints
def test_a_checkpoint_saved_on_the_gpu_loads_on_the_gpu_and_on_the_cpu(tmp_path):
    """The trainer's checkpointer on a GPU model: the file loads (weights_only) and gives a
    predictor with bit-identical weights and the same description on the GPU and on the CPU."""
    from s2vnet.checkpoint import ModelDescription
    from s2vnet.engine.trainer import AtomicCheckpointer
    from s2vnet.inference import load_predictor

    cfg = paper_config()
    model = build(cfg)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    description = ModelDescription(tuple(f"class_{i}" for i in range(num_classes)), num_classes, "CT", training_datasets=("synthetic",))
    AtomicCheckpointer(model, str(tmp_path), description=description).save("model_gpu")
    path = tmp_path / "model_gpu.pth"
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name != "model_gpu.pth" and p.name != "last_checkpoint"]
    torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and dicts only
    original = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    for device in dict.fromkeys([DEVICE, "cpu"]):
        predictor = load_predictor(paper_config("MODEL.DEVICE", device, "MODEL.WEIGHTS", str(path)))
        assert predictor.description == description
        assert predictor.model.device.type == torch.device(device).type
        loaded = predictor.model.state_dict()
        assert loaded.keys() == original.keys()
        different = [name for name, value in original.items() if not torch.equal(loaded[name].cpu(), value)]
        assert different == [], f"{device}: {len(different)} tensors differ after loading, e.g. {different[:5]}"


# ------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world_size: int, backend: str, init_file: str, result_dir: str) -> None:
    """One rank of a 2-process step: rank 0 gets a clip without foreground and no clicks, rank 1
    every class clicked in two rounds, so that the ranks' graphs differ as much as they can."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import s2vnet  # noqa: F401

    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    click_prob = "0.0" if rank == 0 else "1.0"
    cfg = paper_config("MODEL.DEVICE", str(device), "MODEL.S2VNET.INTERACTION.CLICK_PROB", click_prob, "MODEL.S2VNET.INTERACTION.TRAIN_MAX_ROUNDS", "2")
    model = build(cfg).train()
    volume, labels = phantom_volume(8, cfg.INPUT.IMAGE_SIZE, seed=rank)
    if rank == 0:
        labels = np.zeros_like(labels)
    clip = phantom_clips(volume, labels, [3])
    ddp = DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None, find_unused_parameters=False, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    for _ in range(2):
        # bf16 on the GPU, as the paper trains there; fp32 in the CPU dry run.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = ddp(clip)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    # Parameters only: BatchNorm running statistics are per-rank buffers (broadcast_buffers=False).
    torch.save({k: v.detach().cpu() for k, v in model.named_parameters()}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_a_two_process_ddp_step():
    """DDP over NCCL on 2 GPUs (gloo on the CPU in the dry run): no rank waits for a gradient that
    never comes (no find_unused_parameters), and both end with the same weights."""
    import torch.multiprocessing as mp

    if ON_GPU and torch.cuda.device_count() < 2:
        pytest.skip(f"this machine has {torch.cuda.device_count()} GPU: the 2-process NCCL step needs 2")
    backend = "nccl" if ON_GPU else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.spawn(_ddp_worker, args=(2, backend, os.path.join(tmp, "init"), tmp), nprocs=2, join=False)
        deadline = time.time() + 300
        while not context.join(timeout=5):
            if time.time() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"the {backend} DDP step did not finish in 300 s: a rank waits for a gradient that never comes")
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    different = [key for key in states[0] if not torch.allclose(states[0][key], states[1][key], atol=1e-6)]
    assert different == [], f"the ranks' weights differ after the steps: {different[:5]}"

