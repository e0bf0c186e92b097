"""The simulated user of unified training (§3.3, "Unified Segmentation Learning").

On the first slice of each clip, each foreground class present is clicked with probability
``CLICK_PROB``. The first click sits deep inside the class's largest region (jittered); up to
``TRAIN_MAX_ROUNDS - 1`` corrective rounds follow, each against the label map the model shows for
the current clicks. As in evaluation, a corrective round clicks the largest error of *every* class
on the slice, so the model also learns negative clicks on false positives of organs absent from the
slice.

This module only decides where the clicks go (numpy / scipy, its own seeded RNG). Turning clicks
into cluster centres (eqs. 7-8) is :func:`s2vnet.modeling.interaction.accumulate_clicks`, called by
the meta architecture for every round this simulator yields.
"""
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from s2vnet.data.clicks import Click, corrective_clicks, initial_clicks


@dataclass(frozen=True)
class ClickSimulationSettings:
    """Training's simulated clicks (``MODEL.S2VNET.INTERACTION``, training keys)."""

    click_prob: float = 0.5  # chance a present class starts from clicks
    max_rounds: int = 3  # click rounds simulated on a clip's first slice (1 = first clicks only)
    jitter: float = 0.3  # a click is drawn among pixels >= (1 - this) x the region's max depth

    @classmethod
    def from_config(cls, cfg) -> "ClickSimulationSettings":
        i = cfg.MODEL.S2VNET.INTERACTION
        return cls(click_prob=i.CLICK_PROB, max_rounds=i.TRAIN_MAX_ROUNDS, jitter=i.CLICK_JITTER)


class TrainingClickSimulator:
    """Where a simulated user clicks on the first slices of a batch of clips.

    Args:
        settings: how often and how many rounds to click.
        num_classes: classes including background (corrective rounds consider every foreground class).
        ignore_label: label of pixels without ground truth, never clicked.
    """

    def __init__(self, settings: ClickSimulationSettings, num_classes: int, ignore_label: int):
        self.settings = settings
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self._rng: Optional[np.random.Generator] = None

    @property
    def rng(self) -> np.random.Generator:
        # Seeded from torch's seed on first use, which Detectron2 sets per rank (SEED + rank), so
        # runs repeat; a generator of its own keeps the clicks' stream apart from everything else.
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng

    def rounds(
        self,
        label_slices: np.ndarray,
        present_classes: Sequence[Sequence[int]],
        current_labels: Callable[[], np.ndarray],
    ) -> Iterator[List[List[Click]]]:
        """Yield the clicks of each round, per clip, until the drawn number of rounds is done or a
        round has nothing to click.

        Args:
            label_slices: (B, H, W) ground truth of the clicked slices.
            present_classes: per clip, the foreground classes present on its slice.
            current_labels: the (B, H, W) label maps the model shows for the clicks so far (called
                before each corrective round, after the caller has taken in the previous round).
        """
        batch = len(present_classes)
        chosen = [[c for c in present if self.rng.random() < self.settings.click_prob] for present in present_classes]
        if not any(chosen):
            return
        num_rounds = int(self.rng.integers(1, self.settings.max_rounds + 1))
        foreground = list(range(1, self.num_classes))
        options = dict(rng=self.rng, jitter_fraction=self.settings.jitter, ignore_label=self.ignore_label)
        for round_index in range(num_rounds):
            if round_index == 0:
                clicks = [initial_clicks(label_slices[b], chosen[b], **options) for b in range(batch)]
            else:
                predicted = current_labels()
                clicks = [corrective_clicks(label_slices[b], predicted[b], foreground, **options) if chosen[b] else [] for b in range(batch)]
            if not any(clicks):
                return
            yield clicks
