"""Every config key S2VNet adds to Detectron2's, with its default and a one-line comment.

The layout follows Mask2Former so that people who know that code base feel at home:
``MODEL.SEM_SEG_HEAD`` configures the pixel decoder, ``MODEL.MASK_FORMER`` the transformer decoder
and its losses, and ``MODEL.S2VNET`` everything the paper adds on top (propagation, aggregation,
interaction, unified training, volume inference). Defaults are the paper's recipe (§3.3, §4.1)
where it states one, and Mask2Former's defaults otherwise.
"""
from pathlib import Path
from typing import List, Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from s2vnet.utils.errors import InputError


def add_s2vnet_config(cfg: CN) -> None:
    """Add S2VNet's keys (with defaults) to a Detectron2 config, in place."""
    # ---------------------------------------------------------------- data sets and the slice cache
    cfg.DATASETS.ROOT = "datasets"  # folder with the raw WORD/, BTCV/, AMOS22/ data sets (datasets/README.md)
    cfg.DATASETS.NNUNET = []  # extra nnU-Net v2 raw data sets to register, each "name=/path/to/DatasetXXX_Name"
    cfg.DATASETS.NNUNET_VAL_FRACTION = 0.0  # fraction of an nnU-Net data set's imagesTr held out as "<name>_val"
    cfg.DATASETS.CACHE_DIR = "datasets/cache"  # prepared slice cache written by datasets/prepare.py
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False  # clips are square crops: no grouping by aspect ratio
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # volumes have no instance annotations to filter by

    # ---------------------------------------------------------------- training input (clips, LSJ)
    cfg.INPUT.DATASET_MAPPER_NAME = "s2vnet_clip"  # mapper that yields clips of ordered slices
    cfg.INPUT.IMAGE_SIZE = 512  # LSJ: fixed crop size (square) of every training slice (§4.1)
    cfg.INPUT.MIN_SCALE = 0.5  # LSJ: smallest random rescale factor (§4.1)
    cfg.INPUT.MAX_SCALE = 1.75  # LSJ: largest random rescale factor (§4.1)
    cfg.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal" or "none"; applied to all slices of a clip alike
    cfg.INPUT.IGNORE_LABEL = 255  # label of pixels without ground truth (crop padding); excluded from all losses
    cfg.INPUT.CLIP = CN()
    cfg.INPUT.CLIP.NUM_SLICES = 3  # slices per training clip (§3.3: "three slices")
    cfg.INPUT.CLIP.STRIDES = [1]  # slice strides a clip is sampled with (one drawn uniformly per clip)
    cfg.INPUT.CLIP.RANDOM_DIRECTION = True  # clips run up or down the volume at random (inference sweeps both)
    cfg.INPUT.CLIP.FOREGROUND_RATIO = 0.9  # probability that a clip starts on a slice containing foreground
    cfg.INPUT.CLIP.RARE_CLASS_BALANCE = True  # pick the foreground class first, uniformly, then one of its slices
    cfg.INPUT.CLIP.ORGAN_END_RATIO = 0.3  # share of foreground clips that cross an organ's end (centroids learn to let go)

    # ---------------------------------------------------------------- backbone (timm)
    cfg.MODEL.META_ARCHITECTURE = "S2VNet"  # the meta architecture in s2vnet/modeling/meta_arch.py
    cfg.MODEL.BACKBONE.NAME = "TimmBackbone"  # timm models as Detectron2 backbones (s2vnet/modeling/backbone)
    # Slices are grayscale: the model replicates each slice into 3 channels and normalises them with the
    # ImageNet statistics below, so ImageNet-pretrained stems apply unchanged.
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # per-channel mean of the replicated uint8 slice
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # per-channel standard deviation
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.MODEL_NAME = "swin_base_patch4_window7_224"  # any timm model with features_only support
    cfg.MODEL.TIMM.PRETRAINED_WEIGHTS = ""  # local ImageNet checkpoint (timm or official); "" = random init
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.3  # stochastic depth of the backbone (Mask2Former's Swin-B value)
    cfg.MODEL.TIMM.IMG_SIZE = 512  # input size for models that fix it at construction (Swin); ignored by CNNs
    cfg.MODEL.TIMM.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4, 8, 16, 32

    # ---------------------------------------------------------------- pixel decoder (Mask2Former)
    cfg.MODEL.SEM_SEG_HEAD.NAME = "S2VNetHead"  # unused placeholder kept for Detectron2 compatibility
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 17  # classes INCLUDING background (label 0); must match the data set
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # registry name of the pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone features it reads
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]  # the 3-level memory
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256  # channels of the pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256  # channels of the 1/4-resolution mask features
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"  # normalisation of the pixel decoder's convolutions
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4  # stride of the mask features
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6  # deformable-attention encoder layers
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_NUM_POINTS = 4  # sampling points per head and level
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD = 1024  # FFN width of the encoder layers

    # ---------------------------------------------------------------- k-means transformer decoder and losses
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256  # D: width of queries / cluster centres
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100  # N learnable queries (extra identity queries come on top)
    cfg.MODEL.MASK_FORMER.NHEADS = 8  # heads of the query self-attention
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048  # FFN width of each decoder layer
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 9  # decoder layers, cycling over the 1/32, 1/16, 1/8 memory
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0  # dropout in the decoder
    cfg.MODEL.MASK_FORMER.PRE_NORM = False  # pre-norm instead of post-norm decoder layers
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True  # loss on the prediction after every layer (and before the first)
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0  # weight of the classification cross-entropy
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0  # weight of the mask binary cross-entropy
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0  # weight of the mask dice loss
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # cross-entropy weight of the "no object" class
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 12544  # points sampled per mask for the mask losses (112 x 112)
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0  # candidate points per sampled point (importance sampling)
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75  # share of points taken where the prediction is uncertain
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32  # slices are zero-padded to a multiple of this
    cfg.MODEL.MASK_FORMER.MASK_POSITION = True  # mask features carry a learned sine position code (clicks can claim their region)

    # ---------------------------------------------------------------- S2VNet (the paper's additions)
    cfg.MODEL.S2VNET = CN()
    cfg.MODEL.S2VNET.PROPAGATION = CN()
    cfg.MODEL.S2VNET.PROPAGATION.ENABLED = True  # eqs. 4-6: hand foreground centroids to the next slice
    cfg.MODEL.S2VNET.PROPAGATION.DETACH = False  # stop gradients at the hand-over between slices of a clip
    cfg.MODEL.S2VNET.PROPAGATION.SCORE_THRESHOLD = 0.5  # inference: class probability needed to hand a centroid over
    cfg.MODEL.S2VNET.PROPAGATION.EXCLUSIVE_MATCHING = False  # learnable queries skip organs an identity query carries
    cfg.MODEL.S2VNET.AGGREGATION = CN()
    cfg.MODEL.S2VNET.AGGREGATION.ENABLED = True  # eqs. 10-11: recurrent centroid aggregation
    cfg.MODEL.S2VNET.AGGREGATION.NHEADS = 8  # heads of the aggregator's self- and cross-attention
    cfg.MODEL.S2VNET.AGGREGATION.DIM_FEEDFORWARD = 1024  # FFN width of the aggregator
    cfg.MODEL.S2VNET.AGGREGATION.MEMORY_SLOTS = 1  # vectors in each identity's memory H (1 = the paper's)
    cfg.MODEL.S2VNET.INTERACTION = CN()
    cfg.MODEL.S2VNET.INTERACTION.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # eq. 7: backbone features sampled at a click
    cfg.MODEL.S2VNET.INTERACTION.HIDDEN_DIM = 1024  # width of the FFN that maps a sampled feature to a centroid (eq. 7)
    cfg.MODEL.S2VNET.INTERACTION.CLICK_POSITION = True  # the FFN also sees the click's sine position code
    cfg.MODEL.S2VNET.INTERACTION.CLICK_PROB = 0.5  # training: chance a present class starts from clicks (§3.3)
    cfg.MODEL.S2VNET.INTERACTION.TRAIN_MAX_ROUNDS = 3  # training: click rounds simulated on a clip's first slice
    cfg.MODEL.S2VNET.INTERACTION.CLICK_JITTER = 0.3  # training: click drawn among pixels >= (1 - this) x max depth
    cfg.MODEL.S2VNET.INTERACTION.ADAPTIVE_SAMPLING = True  # eq. 8 (False: each round uses only its own click)
    cfg.MODEL.S2VNET.INTERACTION.BETA = 0.8  # eq. 8: weight of earlier rounds' features (§3.3)
    cfg.MODEL.S2VNET.INTERACTION.MAX_CLICKS_PER_CLASS = 20  # cluster centres reserved per class for clicks (§3.3)
    cfg.MODEL.S2VNET.INTERACTION.CLICK_LOSS_WEIGHT = 5.0  # training: weight of the BCE of each click centroid's mask at its own click
    # 0 turns it off; 5 was best on validation phantoms, higher weights lower the automatic pass (docs/experiments.md)
    cfg.MODEL.S2VNET.INTERACTION.FUSED_LOSS_WEIGHT = 5.0  # training: weight of the CE of the eq. 9-fused labels where a clicked class is true or predicted

    # ---------------------------------------------------------------- optimisation
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" (paper) or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # learning-rate factor of the backbone (§4.1)
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeds, position tables)
    cfg.SOLVER.AMP.DTYPE = "float16"  # mixed-precision training dtype when SOLVER.AMP.ENABLED ("float16" or "bfloat16")
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # clip the global gradient norm of the whole model
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01  # max global gradient norm (Mask2Former's value)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # clip gradients (Mask2Former does, the paper is silent)

    # ---------------------------------------------------------------- inference (s2vnet.inference.InferenceSettings)
    cfg.TEST.SLICE_BATCH_SIZE = 16  # slices encoded per backbone + pixel-decoder batch
    cfg.TEST.AMP_DTYPE = "bfloat16"  # autocast dtype on GPU ("bfloat16", "float16" or "float32"); CPU runs in float32
    cfg.TEST.COMPILE = False  # torch.compile the backbone and pixel decoder for inference
    cfg.TEST.INPUT_SIZE = 0  # resize slices so the longer side is this (0 = native slice size)

    # ---------------------------------------------------------------- evaluation
    cfg.TEST.EVAL_ROUNDS = 15  # interactive evaluation: click rounds per volume (§4.4, Fig. 5)
    cfg.TEST.NSD_TOLERANCE = 1.0  # NSD tolerance in mm (one value for all classes)
    cfg.TEST.METRIC_PROTOCOL = "standard"  # "standard" (docs/evaluation.md) or "word" (the WORD benchmark's script)
    cfg.SEED = 0  # fixed by default so that runs are reproducible (Detectron2's default is random)


def get_s2vnet_cfg() -> CN:
    """Detectron2's default config with S2VNet's keys added."""
    cfg = get_cfg()
    add_s2vnet_config(cfg)
    return cfg


# Keys that moved or were removed, with what to write instead (a config written for an older
# version gets this hint rather than a bare "Non-existent config key").
RENAMED_KEYS = {
    "MODEL.S2VNET.TEST.SLICE_BATCH_SIZE": "TEST.SLICE_BATCH_SIZE",
    "MODEL.S2VNET.TEST.AMP_DTYPE": "TEST.AMP_DTYPE",
    "MODEL.S2VNET.TEST.COMPILE": "TEST.COMPILE",
    "INPUT.TEST_SIZE": "TEST.INPUT_SIZE",
    "MODEL.S2VNET.INTERACTION.TRAIN_MISSED_CLICK_PROB": None,  # tried and not adopted: docs/experiments.md
    "TEST.BOUNDARY_BAND_PIXELS": None,  # a diagnostic now: tools/eval_volume.py --diagnostics --band-width N
}


def _key_error_message(error: Exception) -> str:
    """The config library's message about an unknown key, with where an old key went."""
    message = str(error.args[0] if error.args else error)
    unknown = message.rsplit(" ", 1)[-1]  # "Non-existent config key: A.B" (a whole missing node names only its top)
    hints = []
    for old, new in RENAMED_KEYS.items():
        if old == unknown or old.startswith(unknown + "."):
            hints.append(f"{old} was renamed to {new}" if new else f"{old} was removed")
    return f"{message} ({'; '.join(hints)})" if hints else message


def load_config(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Load a YAML config (with ``_BASE_`` inheritance) and command-line overrides, then freeze it.

    Unknown keys, unreadable files and malformed overrides raise :class:`InputError` naming the
    file or key, instead of Detectron2's bare ``KeyError``.
    """
    cfg = get_s2vnet_cfg()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            cfg.merge_from_file(str(path))
        except KeyError as error:
            raise InputError(f"config file {path}: {_key_error_message(error)}") from None
        except Exception as error:  # YAML syntax errors and friends come in many types
            raise InputError(f"config file {path} could not be read: {error}") from None
    if len(opts) % 2:
        raise InputError(f"command-line overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as error:  # yacs asserts that a key exists
        raise InputError(f"command-line override: {_key_error_message(error)}") from None
    validate_config(cfg)
    cfg.freeze()
    return cfg


def schedule_overrides(max_iter: int) -> List[str]:
    """Config overrides that train for ``max_iter`` iterations with the phantom schedule's shape:
    LR steps at 75% and 92% of the run, a checkpoint every third of it (used by the demo, the
    ablation and their ``--iters`` flags, so a shorter run keeps the same schedule)."""
    if max_iter < 1:
        raise InputError(f"training iterations = {max_iter}: must be at least 1")
    return [
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.STEPS", f"({int(max_iter * 0.75)}, {int(max_iter * 0.92)})",
        "SOLVER.CHECKPOINT_PERIOD", str(max(max_iter // 3, 10)),
    ]


def validate_config(cfg: CN) -> None:
    """Check values whose mistakes would otherwise surface deep inside training."""
    choices = {
        "INPUT.RANDOM_FLIP": (cfg.INPUT.RANDOM_FLIP, ("horizontal", "none")),
        "SOLVER.OPTIMIZER": (cfg.SOLVER.OPTIMIZER, ("ADAMW", "SGD")),
        "SOLVER.AMP.DTYPE": (cfg.SOLVER.AMP.DTYPE, ("float16", "bfloat16")),
        "TEST.AMP_DTYPE": (cfg.TEST.AMP_DTYPE, ("bfloat16", "float16", "float32")),
        "TEST.METRIC_PROTOCOL": (cfg.TEST.METRIC_PROTOCOL, ("standard", "word")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(f"config {key} = {value!r}: must be one of {allowed}")
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES < 2:
        raise InputError(
            f"config MODEL.SEM_SEG_HEAD.NUM_CLASSES = {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}: "
            "needs background plus at least one class"
        )
    if cfg.INPUT.CLIP.NUM_SLICES < 1 or not cfg.INPUT.CLIP.STRIDES or min(cfg.INPUT.CLIP.STRIDES) < 1:
        raise InputError(
            f"config INPUT.CLIP: NUM_SLICES = {cfg.INPUT.CLIP.NUM_SLICES} and STRIDES = {cfg.INPUT.CLIP.STRIDES} "
            "must be positive"
        )
    if not 0.0 <= cfg.MODEL.S2VNET.INTERACTION.BETA <= 1.0:
        raise InputError(f"config MODEL.S2VNET.INTERACTION.BETA = {cfg.MODEL.S2VNET.INTERACTION.BETA}: must lie in [0, 1]")
    click_prob = cfg.MODEL.S2VNET.INTERACTION.CLICK_PROB
    if not 0.0 <= click_prob <= 1.0:
        raise InputError(f"config MODEL.S2VNET.INTERACTION.CLICK_PROB = {click_prob}: must lie in [0, 1]")
    if cfg.TEST.SLICE_BATCH_SIZE < 1:
        raise InputError(f"config TEST.SLICE_BATCH_SIZE = {cfg.TEST.SLICE_BATCH_SIZE}: must be at least 1")
    if cfg.INPUT.IMAGE_SIZE % cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY:
        raise InputError(
            f"config INPUT.IMAGE_SIZE = {cfg.INPUT.IMAGE_SIZE}: must be a multiple of "
            f"MODEL.MASK_FORMER.SIZE_DIVISIBILITY = {cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY}"
        )
    if cfg.MODEL.S2VNET.AGGREGATION.ENABLED and not cfg.MODEL.S2VNET.PROPAGATION.ENABLED:
        raise InputError("config MODEL.S2VNET.AGGREGATION.ENABLED needs MODEL.S2VNET.PROPAGATION.ENABLED")
