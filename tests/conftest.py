"""Shared pytest fixtures and markers."""
from pathlib import Path

import pytest

import s2vnet  # noqa: F401  (applies the Detectron2 compatibility shims before any test imports it)

DATA_DIR = Path(__file__).parent / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model for a while; runs in CI, skip locally with -m 'not slow'")
    config.addinivalue_line("markers", "gpu: CUDA paths (tests/test_gpu.py); skip without CUDA, run by scripts/gpu_check.sh (docs/gpu.md)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def real_ct_path() -> Path:
    """A real abdominal CT (TotalSegmentator test data, Apache-2.0, see tests/data/README.md)."""
    return DATA_DIR / "totalseg_example" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def real_seg_path() -> Path:
    return DATA_DIR / "totalseg_example" / "example_seg.nii.gz"


def tiny_config(num_classes: int = 4, **overrides):
    """A small S2VNet config that builds and trains in seconds on a CPU (random weights)."""
    from s2vnet.config import get_s2vnet_cfg

    cfg = get_s2vnet_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.TIMM.MODEL_NAME = "resnet18"
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    cfg.MODEL.S2VNET.AGGREGATION.NHEADS = 4
    cfg.MODEL.S2VNET.AGGREGATION.DIM_FEEDFORWARD = 64
    cfg.MODEL.S2VNET.INTERACTION.HIDDEN_DIM = 64
    cfg.INPUT.IMAGE_SIZE = 64
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def tiny_model(cfg=None, seed: int = 0):
    import torch
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401

    torch.manual_seed(seed)
    return build_model(cfg if cfg is not None else tiny_config())


def tiny_checkpoint(folder: Path, num_classes: int = 8, seed: int = 0, description=None, **overrides):
    """A config file and random-initialised weights of a tiny model in ``folder``, with no data set
    (enough to exercise the tools' I/O and geometry): ``(config.yaml, random.pth)``. With a
    :class:`~s2vnet.checkpoint.ModelDescription` the checkpoint describes its model."""
    from detectron2.checkpoint import DetectionCheckpointer

    from s2vnet.checkpoint import DESCRIPTION_KEY

    cfg = tiny_config(num_classes=num_classes, **overrides)
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.DATASETS.ROOT = ""
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    extra = {} if description is None else {DESCRIPTION_KEY: description.to_dict()}
    DetectionCheckpointer(tiny_model(cfg, seed=seed), str(folder)).save("random", **extra)
    return config, folder / "random.pth"


def load_tool(name: str, module_name: str):
    """``tools/<name>.py`` imported as a module, so that its main() runs in the test's process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_clip(size: int = 64, seed: int = 0, num_slices: int = 3):
    """A clip with three 'organs' (labels 1-3) that move and change across slices, plus padding."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(num_slices, size, size, dtype=torch.int64)
    for t in range(num_slices):
        labels[t, 8 + t : 28 + t, 8:28] = 1
        labels[t, 34:50, 34 + 2 * t : 54] = 2
        if t < 2:
            labels[t, 4:14, 40:60] = 3
    labels[:, :, size - 6 :] = 255  # crop padding: ignored
    noise = torch.randint(0, 20, labels.shape, generator=generator)
    image = (labels.clamp(max=3) * 60 + noise).clamp(max=255).to(torch.uint8)
    from s2vnet.data.clip_mapper import instances_from_sem_seg

    return {
        "image": image,
        "sem_seg": labels,
        "instances": [instances_from_sem_seg(s, 255) for s in labels],
        "case_id": f"synthetic_{seed}",
    }


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small phantom data set in the nnU-Net raw layout (4 train + 2 test cases, 24 x 64 x 64)."""
    from s2vnet.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "Dataset900_Phantom"
    write_phantom_dataset(root, num_train=4, num_test=2, seed=3, shape=(24, 64, 64))
    return root


def phantom_config(phantom_root: Path, cache_dir: Path, name: str = "phantomtest", **overrides):
    """The tiny model config pointed at ``phantom_root`` (registered as ``name``)."""
    cfg = tiny_config(num_classes=8, **overrides)
    cfg.DATASETS.ROOT = ""  # only the phantom: keep WORD/BTCV/AMOS names free for the registration tests
    cfg.DATASETS.NNUNET = [f"{name}={phantom_root}"]
    cfg.DATASETS.TRAIN = (f"{name}_train",)
    cfg.DATASETS.TEST = (f"{name}_test",)
    cfg.DATASETS.CACHE_DIR = str(cache_dir)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.INPUT.MIN_SCALE = 0.8
    cfg.INPUT.MAX_SCALE = 1.25
    return cfg


@pytest.fixture(scope="session")
def prepared_phantom(phantom_root, tmp_path_factory):
    """(config, cache folder) with the phantom data set registered and prepared."""
    from s2vnet.data.datasets import register_datasets_from_config
    from s2vnet.data.prepare import jobs_for_dataset, prepare_jobs

    cache = tmp_path_factory.mktemp("cache")
    cfg = phantom_config(phantom_root, cache)
    register_datasets_from_config(cfg)
    jobs = {}
    for name in (cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]):
        for job in jobs_for_dataset(name, cache):
            jobs[job.case_dir] = job
    report = prepare_jobs(list(jobs.values()), progress=False)
    assert report.ok, report.failed
    return cfg, cache
