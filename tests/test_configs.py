"""Config files: every YAML loads, data set facts are right, bad configs fail clearly, and the
paper's Swin-B configuration builds, trains a step and infers on a 512 x 512 slice on CPU."""
import time
from pathlib import Path

import pytest
import torch

from conftest import synthetic_clip
from s2vnet.config import load_config, schedule_overrides
from s2vnet.data.datasets import AMOS_CLASSES, BTCV_CLASSES, WORD_CLASSES
from s2vnet.utils.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.MODEL.META_ARCHITECTURE == "S2VNet"


@pytest.mark.parametrize(
    "folder, classes, train, test",
    [("word", WORD_CLASSES, "word_train", "word_test"), ("btcv", BTCV_CLASSES, "btcv_train", "btcv_val"), ("amos", AMOS_CLASSES, "amos_train", "amos_ct_val")],
)
def test_dataset_configs_match_the_datasets(folder, classes, train, test):
    cfg = load_config(str(CONFIGS / folder / "s2vnet_swinb.yaml"))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(classes)
    assert train in cfg.DATASETS.TRAIN and test in cfg.DATASETS.TEST
    # The paper's recipe (§4.1), inherited from configs/Base-S2VNet.yaml.
    assert cfg.SOLVER.MAX_ITER == 20000 and tuple(cfg.SOLVER.STEPS) == (14000, 18000)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.BASE_LR == pytest.approx(2e-4) and cfg.SOLVER.WEIGHT_DECAY == pytest.approx(0.02)
    assert cfg.INPUT.IMAGE_SIZE == 512 and (cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE) == (0.5, 1.75)
    assert cfg.MODEL.S2VNET.INTERACTION.BETA == pytest.approx(0.8) and cfg.MODEL.S2VNET.INTERACTION.MAX_CLICKS_PER_CLASS == 20
    assert cfg.MODEL.TIMM.MODEL_NAME.startswith("swin_base")
    assert load_config(str(CONFIGS / folder / "s2vnet_r50.yaml")).MODEL.TIMM.MODEL_NAME == "resnet50"


def test_the_phantom_schedule_is_what_the_demo_and_ablation_rebuild_for_any_budget():
    # The demo and the ablation train the config's MAX_ITER through schedule_overrides: at the
    # config's own budget they must reproduce its steps, so "the demo's budget" means one schedule.
    cfg = load_config(str(CONFIGS / "phantom" / "s2vnet_phantom.yaml"))
    rebuilt = load_config(str(CONFIGS / "phantom" / "s2vnet_phantom.yaml"), schedule_overrides(cfg.SOLVER.MAX_ITER))
    assert tuple(rebuilt.SOLVER.STEPS) == tuple(cfg.SOLVER.STEPS)
    assert rebuilt.SOLVER.CHECKPOINT_PERIOD == cfg.SOLVER.CHECKPOINT_PERIOD
    short = load_config(str(CONFIGS / "phantom" / "s2vnet_phantom.yaml"), schedule_overrides(200))
    assert (short.SOLVER.MAX_ITER, tuple(short.SOLVER.STEPS), short.SOLVER.CHECKPOINT_PERIOD) == (200, (150, 184), 66)
    with pytest.raises(InputError, match="training iterations = 0"):
        schedule_overrides(0)


def test_unknown_keys_and_bad_values_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  S2VNET:\n    PROPAGATON:\n      ENABLED: False\n")
    with pytest.raises(InputError, match="bad.yaml.*PROPAGATON"):
        load_config(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match="BETA"):
        load_config(str(CONFIGS / "phantom/s2vnet_phantom.yaml"), ["MODEL.S2VNET.INTERACTION.BETA", "1.5"])
    with pytest.raises(InputError, match="INTERACTION.CLICK_PROB = 1.5: must lie in"):
        load_config(None, ["MODEL.S2VNET.INTERACTION.CLICK_PROB", "1.5"])
    # Keys of older versions name their new home (or say they were removed).
    with pytest.raises(InputError, match=r"INPUT.TEST_SIZE was renamed to TEST.INPUT_SIZE"):
        load_config(None, ["INPUT.TEST_SIZE", "128"])
    moved = tmp_path / "old.yaml"
    moved.write_text("MODEL:\n  S2VNET:\n    TEST:\n      SLICE_BATCH_SIZE: 8\n")
    with pytest.raises(InputError, match=r"old.yaml.*renamed to TEST.SLICE_BATCH_SIZE"):
        load_config(str(moved))
    with pytest.raises(InputError, match="TRAIN_MISSED_CLICK_PROB was removed"):
        load_config(None, ["MODEL.S2VNET.INTERACTION.TRAIN_MISSED_CLICK_PROB", "0.5"])
    with pytest.raises(InputError, match="NO_SUCH_KEY"):
        load_config(None, ["MODEL.NO_SUCH_KEY", "1"])
    with pytest.raises(InputError, match="AGGREGATION"):
        load_config(None, ["MODEL.S2VNET.PROPAGATION.ENABLED", "False"])


def test_every_added_key_has_a_comment():
    """config.py documents each key it adds with a one-line comment."""
    source = (Path(__file__).resolve().parents[1] / "s2vnet" / "config.py").read_text()
    body = source.split("def add_s2vnet_config")[1].split("\ndef ")[0]
    assignments = [line for line in body.splitlines() if line.strip().startswith("cfg.") and " = " in line and "CN()" not in line]
    assert assignments
    undocumented = [line.strip() for line in assignments if "#" not in line]
    assert undocumented == []


def test_swin_b_paper_config_trains_and_infers_on_cpu(capsys):
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401
    from s2vnet.data.clip_mapper import instances_from_sem_seg

    cfg = load_config(str(CONFIGS / "word/s2vnet_swinb.yaml"), ["MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", "128"])
    torch.manual_seed(0)
    model = build_model(cfg)
    parameters = sum(p.numel() for p in model.parameters())
    assert 100e6 < parameters < 130e6  # Swin-B (88M) + pixel decoder + decoder
    clip = synthetic_clip(size=128, seed=0)
    clip["sem_seg"][clip["sem_seg"] == 3] = 16  # use a WORD class id
    clip["instances"] = [instances_from_sem_seg(s, 255) for s in clip["sem_seg"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    start = time.perf_counter()
    losses = model([clip])
    sum(losses.values()).backward()
    optimizer.step()
    train_seconds = time.perf_counter() - start
    assert all(torch.isfinite(v) for v in losses.values())
    assert len([k for k in losses if k.startswith("loss_ce")]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS + 1  # deep supervision
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        features = model.encode(torch.zeros(1, 512, 512, dtype=torch.uint8))
        outputs = model.decode(features)
    infer_seconds = time.perf_counter() - start
    assert outputs["pred_masks"].shape == (1, 100, 128, 128)
    assert outputs["pred_logits"].shape == (1, 100, 18)
    with capsys.disabled():
        print(f"\n[Swin-B] {parameters / 1e6:.1f} M parameters; training step (1 clip of 3 x 128^2): {train_seconds:.1f} s; "
              f"inference step (one 512^2 slice): {infer_seconds:.1f} s")
