"""The typed contracts between the encoder, the slice decoder, propagation and interaction.

* :class:`SliceFeatures`: what encoding a batch of slices yields (backbone + pixel decoder), and
  the decoder's query-independent work on them once a caller has prepared it
  (:class:`PreparedMemory`, cached by interactive sessions that decode the same slices many times).
* :class:`Tracks`: identity-carrying cluster centres for the next slice, each with the class it
  stands for and the :class:`CentroidOrigin` of its identity.
"""
import enum
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

# What selects slices of a batch: a Python slice keeps views, an index tensor gathers (copies).
SliceIndex = Union[slice, torch.Tensor]


@dataclass
class PreparedMemory:
    """The slice decoder's per-slice work that does not depend on the queries
    (:meth:`~s2vnet.modeling.transformer_decoder.kmeans_decoder.KMeansTransformerDecoder.prepare_memory`).

    Attributes:
        memory: per memory level, the projected features (B, h*w, D) with their level embedding.
        memory_pos: per level, the sine position code (B, h*w, D) of the memory.
        level_mask_features: per level, the mask features resampled to it (k-means assignment).
        mask_features: (B, C, H/s, W/s) mask features, with their position code when the decoder has one.
    """

    memory: List[torch.Tensor]
    memory_pos: List[torch.Tensor]
    level_mask_features: List[torch.Tensor]
    mask_features: torch.Tensor

    def select(self, index: SliceIndex) -> "PreparedMemory":
        return PreparedMemory(
            memory=[level[index] for level in self.memory],
            memory_pos=[level[index] for level in self.memory_pos],
            level_mask_features=[level[index] for level in self.level_mask_features],
            mask_features=self.mask_features[index],
        )


@dataclass
class SliceFeatures:
    """Encoded slices: backbone + pixel decoder output for a batch of B slices.

    Attributes:
        mask_features: (B, C, H/s, W/s) per-pixel embeddings the masks are dot products with.
        multi_scale_features: the decoder's memory levels [1/32, 1/16, 1/8], each (B, C, h, w).
            Only :meth:`prepare_memory` reads them: once ``prepared`` is set they may be empty.
        click_features: the backbone maps eq. 7 samples clicks from, by feature name; None where a
            caller only decodes.
        input_size: (H, W) of the padded network input the maps cover.
        prepared: the decoder's cached query-independent work, or None (then it is done per decode).
    """

    mask_features: torch.Tensor
    multi_scale_features: List[torch.Tensor]
    click_features: Optional[Dict[str, torch.Tensor]]
    input_size: Tuple[int, int]
    prepared: Optional[PreparedMemory] = None

    def __len__(self) -> int:
        return int(self.mask_features.shape[0])

    def select(self, index: SliceIndex, with_click_features: bool = True) -> "SliceFeatures":
        """The features of a subset of the slices.

        A tensor index gathers (copies), and an interactive round gathers a pair of slices at every
        step: callers that only decode leave out the click features (``with_click_features=False``),
        and mask features shared with the prepared memory are gathered once.
        """
        prepared = None if self.prepared is None else self.prepared.select(index)
        if prepared is not None and self.prepared.mask_features is self.mask_features:
            mask_features = prepared.mask_features
        else:
            mask_features = self.mask_features[index]
        click_features = None
        if with_click_features and self.click_features is not None:
            click_features = {name: level[index] for name, level in self.click_features.items()}
        return SliceFeatures(
            mask_features=mask_features,
            multi_scale_features=[level[index] for level in self.multi_scale_features],
            click_features=click_features,
            input_size=self.input_size,
            prepared=prepared,
        )

    def detached(self) -> "SliceFeatures":
        """The decoder's inputs cut from the autograd graph (the click features are left as they are:
        only the caller's own click sampling differentiates through them)."""
        return replace(
            self,
            mask_features=self.mask_features.detach(),
            multi_scale_features=[level.detach() for level in self.multi_scale_features],
        )

    def clone(self) -> "SliceFeatures":
        """A copy that shares no storage with these features (so that holding one slice does not keep
        a whole encoded chunk alive)."""
        prepared = self.prepared
        if prepared is not None:
            prepared = PreparedMemory(
                [t.clone() for t in prepared.memory],
                [t.clone() for t in prepared.memory_pos],
                [t.clone() for t in prepared.level_mask_features],
                prepared.mask_features.clone(),
            )
        return SliceFeatures(
            mask_features=self.mask_features.clone(),
            multi_scale_features=[level.clone() for level in self.multi_scale_features],
            click_features=None if self.click_features is None else {k: v.clone() for k, v in self.click_features.items()},
            input_size=self.input_size,
            prepared=prepared,
        )


class CentroidOrigin(enum.Enum):
    """Where the identity a track carries was started."""

    LEARNABLE = "learnable"  # a learnable query predicted a foreground class, and was handed over (eq. 5-6)
    CLICK = "click"  # a click initialised it (eqs. 7-8)


@dataclass
class Tracks:
    """Identity-carrying queries for the next slice, for a batch of clips (or one volume).

    Attributes:
        queries: (E, D) the initial cluster centres for the next slice.
        labels: (E,) the class each centroid stands for (its identity).
        batch_index: (E,) which batch element (clip, or sweep of a session) each belongs to.
        memory: (E, M, D) aggregation memory H, or None when aggregation is off.
        origins: where each identity was started; LEARNABLE where not given.
    """

    queries: torch.Tensor
    labels: torch.Tensor
    batch_index: torch.Tensor
    memory: Optional[torch.Tensor] = None
    origins: List[CentroidOrigin] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.origins) != len(self):
            if self.origins:
                raise ValueError(f"{len(self.origins)} origins for {len(self)} tracks")
            self.origins = [CentroidOrigin.LEARNABLE] * len(self)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def from_click(self) -> List[bool]:
        """Per track: was its identity started by a click?"""
        return [origin is CentroidOrigin.CLICK for origin in self.origins]

    @staticmethod
    def empty(dim: int, device, memory_slots: Optional[int] = None, dtype=torch.float32) -> "Tracks":
        memory = None if memory_slots is None else torch.zeros(0, memory_slots, dim, device=device, dtype=dtype)
        return Tracks(
            queries=torch.zeros(0, dim, device=device, dtype=dtype),
            labels=torch.zeros(0, dtype=torch.int64, device=device),
            batch_index=torch.zeros(0, dtype=torch.int64, device=device),
            memory=memory,
        )

    def select(self, index: Union[torch.Tensor, Sequence[int]]) -> "Tracks":
        index = torch.as_tensor(index, dtype=torch.long)
        memory = None if self.memory is None else self.memory[index]
        origins = [self.origins[i] for i in index.tolist()]
        return Tracks(self.queries[index], self.labels[index], self.batch_index[index], memory, origins)

    @staticmethod
    def cat(parts: List["Tracks"]) -> "Tracks":
        parts = [p for p in parts if p is not None]
        memory = None if parts[0].memory is None else torch.cat([p.memory for p in parts])
        return Tracks(
            torch.cat([p.queries for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.cat([p.batch_index for p in parts]),
            memory,
            [origin for p in parts for origin in p.origins],
        )

    def padded(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scatter the tracks into a padded (B, E_max, D) batch of extra queries.

        Returns ``(extra_queries, padding_mask, slot)``, where ``slot[e]`` is track e's position
        among its batch element's extra queries (its query index is N + slot[e]).
        """
        device = self.queries.device
        counts = torch.bincount(self.batch_index, minlength=batch_size)
        max_count = int(counts.max()) if len(self) else 0
        # Slot of each track among the tracks of its batch element, in the order given.
        order = torch.argsort(self.batch_index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(self.batch_index)
        slot[order] = torch.arange(len(self), device=device) - starts[self.batch_index[order]]
        extra = self.queries.new_zeros(batch_size, max_count, self.queries.shape[1])
        padding = torch.ones(batch_size, max_count, dtype=torch.bool, device=device)
        # index_put keeps the autograd graph: gradients flow back into each track's query.
        extra = extra.index_put((self.batch_index, slot), self.queries)
        padding[self.batch_index, slot] = False
        return extra, padding, slot
