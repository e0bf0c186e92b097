"""Dataset registration: WORD, BTCV, AMOS 2022 and any nnU-Net v2 raw dataset.

Nothing is registered on import (registering as an import side effect makes the catalog depend on
import order and hides where names come from). Tools call one function::

    from s2vnet.data.datasets import register_datasets_from_config
    register_datasets_from_config(cfg)   # DATASETS.ROOT, DATASETS.NNUNET, then checks TRAIN / TEST

or register explicitly with :func:`register_builtin_datasets`, :func:`register_word`,
:func:`register_btcv`, :func:`register_amos` or :func:`register_nnunet_dataset`. Every dataset
returns one dict per volume (see :mod:`s2vnet.data.datasets.nnunet` for the contract).
"""
from .builtin import (
    AMOS_ABBREV,
    AMOS_CLASSES,
    BTCV_ABBREV,
    BTCV_CLASSES,
    BUILTIN_FOLDERS,
    WORD_ABBREV,
    WORD_CLASSES,
    amos_modality,
    load_btcv_split,
    register_amos,
    register_btcv,
    register_builtin_datasets,
    register_datasets_from_config,
    register_word,
)
from .nnunet import (
    EVALUATOR_TYPE,
    IGNORE_LABEL,
    load_dataset_json,
    modality_from_channel_name,
    register_nnunet_dataset,
    unregister_datasets,
    volume_dataset_names,
)

__all__ = [
    "AMOS_ABBREV",
    "AMOS_CLASSES",
    "BTCV_ABBREV",
    "BTCV_CLASSES",
    "BUILTIN_FOLDERS",
    "EVALUATOR_TYPE",
    "IGNORE_LABEL",
    "WORD_ABBREV",
    "WORD_CLASSES",
    "amos_modality",
    "load_btcv_split",
    "load_dataset_json",
    "modality_from_channel_name",
    "register_amos",
    "register_btcv",
    "register_builtin_datasets",
    "register_datasets_from_config",
    "register_nnunet_dataset",
    "register_word",
    "unregister_datasets",
    "volume_dataset_names",
]
