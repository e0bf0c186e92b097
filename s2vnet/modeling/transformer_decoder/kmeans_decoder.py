"""The slice decoder D of eq. 4: a Mask2Former transformer decoder with k-means cross-attention.

Design followed: Mask2Former's transformer decoder (Cheng et al. 2022) with kMaX-DeepLab's k-means cross-attention; written for this project, no code copied.

Queries are N learnable cluster centres plus any number of *extra* queries per slice: centroids
handed over from the previous slice (eq. 6, 11) and centroids made from clicks (eq. 7). Each layer
cycles over the 1/32, 1/16, 1/8 memory and applies k-means cross-attention (eqs. 2-3),
self-attention among all queries, and an FFN. Class and mask predictions are made before the first
layer and after every layer (deep supervision); the mask logits also drive the next layer's
k-means assignment.

With ``mask_position`` the mask features carry a learned projection of a sine position code
(zero-initialised, so training starts from Mask2Former's masks). A mask logit is a dot product
with the mask features; with the code in them a query can also say *where* its pixels are, which
is what lets a click centroid (made from the click's feature and position code, eq. 7) claim the
region around the click, and lets any centroid keep an organ on its side of the body. The code's
fastest sinusoid has 16 periods across the map (a few mask cells), its slowest spans the slice.

Extra queries have no learned position embedding of their own (their number varies); they share
one learned embedding, so self-attention can tell them from the learnable queries. Batches with
different numbers of extra queries per sample are padded; padded queries are masked out of the
assignment and of self-attention.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from s2vnet.modeling.layers import MLP, TransformerSettings, feedforward
from s2vnet.modeling.position_encoding import PositionEmbeddingSine
from s2vnet.modeling.structures import PreparedMemory
from s2vnet.modeling.transformer_decoder.kmeans_attention import KMeansCrossAttention


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x, pos, key_padding_mask=None):
        source = self.norm(x) if self.pre_norm else x
        q = k = source + pos
        attended = self.attn(q, k, source, key_padding_mask=key_padding_mask, need_weights=False)[0]
        x = x + self.dropout(attended)
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.net = feedforward(d_model, dim_feedforward, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x):
        if self.pre_norm:
            return x + self.dropout(self.net(self.norm(x)))
        return self.norm(x + self.dropout(self.net(x)))


class KMeansTransformerDecoder(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        mask_dim: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        transformer: TransformerSettings,
        pre_norm: bool,
        num_feature_levels: int = 3,
        mask_position: bool = False,
    ):
        """num_classes counts background (label 0); the classifier has one more output, "no object"."""
        super().__init__()
        self.num_queries = num_queries
        self.num_layers = transformer.num_layers
        self.num_feature_levels = num_feature_levels
        self.num_classes = num_classes
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_feature_levels)
        )
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.extra_query_embed = nn.Embedding(1, hidden_dim)
        self.cross_attention_layers = nn.ModuleList(KMeansCrossAttention(hidden_dim, transformer.dropout) for _ in range(self.num_layers))
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, transformer.num_heads, transformer.dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, transformer.dim_feedforward, transformer.dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.mask_position_encoding = None
        if mask_position:
            self.mask_position_encoding = PositionEmbeddingSine(mask_dim // 2, temperature=256.0, scale=2 * math.pi * 16)
            self.mask_position_proj = nn.Conv2d(2 * (mask_dim // 2), mask_dim, 1)
            nn.init.zeros_(self.mask_position_proj.weight)
            nn.init.zeros_(self.mask_position_proj.bias)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_dim: int):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_dim": mask_dim,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "transformer": TransformerSettings(
                num_layers=mf.DEC_LAYERS, num_heads=mf.NHEADS, dim_feedforward=mf.DIM_FEEDFORWARD, dropout=mf.DROPOUT
            ),
            "pre_norm": mf.PRE_NORM,
            "mask_position": mf.MASK_POSITION,
        }

    def prepare_memory(self, multi_scale_features: List[torch.Tensor], mask_features: torch.Tensor) -> PreparedMemory:
        """Per-slice work independent of the queries: projected memory, its positions, the mask
        features (with their position code, if any) and their resampling to each memory level (for
        the k-means assignment).

        Mask logits are linear in the mask features and bilinear resampling is linear too, so
        ``embed . resample(features)`` equals Mask2Former's ``resample(embed . features)``; resampling
        the features once per slice saves a full-resolution mask prediction per layer at inference.
        """
        if self.mask_position_encoding is not None:
            code = self.mask_position_encoding(mask_features)
            mask_features = mask_features + self.mask_position_proj(code)
        memory, memory_pos, level_mask_features = [], [], []
        for level in range(self.num_feature_levels):
            feature = multi_scale_features[level]
            pos = self.position_encoding(feature).flatten(2).transpose(1, 2)
            memory.append(self.input_proj[level](feature).flatten(2).transpose(1, 2) + self.level_embed.weight[level])
            memory_pos.append(pos)
            level_mask_features.append(
                F.interpolate(mask_features, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            )
        return PreparedMemory(memory, memory_pos, level_mask_features, mask_features)

    def forward(
        self,
        multi_scale_features: List[torch.Tensor],
        mask_features: torch.Tensor,
        extra_queries: Optional[torch.Tensor] = None,
        extra_padding_mask: Optional[torch.Tensor] = None,
        all_layer_masks: Optional[bool] = None,
        prepared_memory: Optional[PreparedMemory] = None,
    ) -> Dict[str, object]:
        """Decode one slice (per batch element) with N learnable and E extra queries.

        Args:
            multi_scale_features: memory levels [1/32, 1/16, 1/8], each (B, C, h, w).
            mask_features: (B, mask_dim, H/4, W/4).
            extra_queries: (B, E, D) handed-over or click centroids, or None.
            extra_padding_mask: (B, E), True where an extra query is padding.
            all_layer_masks: predict full-resolution masks after every layer (deep supervision);
                defaults to ``self.training``. Otherwise only the last layer's masks are made.
            prepared_memory: the output of :meth:`prepare_memory`, if the caller cached it.
        Returns:
            ``pred_logits`` (B, N+E, K+1), ``pred_masks`` (B, N+E, H/4, W/4), ``query_embeddings``
            (B, N+E, D) (the final cluster centres, to hand over), ``query_padding_mask`` (B, N+E),
            and ``aux_outputs`` (the predictions before the first and after each earlier layer).
        """
        if all_layer_masks is None:
            all_layer_masks = self.training
        batch = mask_features.shape[0]
        prepared = prepared_memory or self.prepare_memory(multi_scale_features, mask_features)
        mask_features = prepared.mask_features

        queries = self.query_feat.weight[None].expand(batch, -1, -1)
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        padding = torch.zeros(batch, self.num_queries, dtype=torch.bool, device=mask_features.device)
        if extra_queries is not None:
            num_extra = extra_queries.shape[1]
            if extra_padding_mask is None:
                extra_padding_mask = torch.zeros(batch, num_extra, dtype=torch.bool, device=mask_features.device)
            queries = torch.cat([queries, extra_queries.to(queries.dtype)], dim=1)
            query_pos = torch.cat([query_pos, self.extra_query_embed.weight[None].expand(batch, num_extra, -1)], dim=1)
            padding = torch.cat([padding, extra_padding_mask], dim=1)
        # All-padding rows would make attention softmax NaN; they cannot occur (N >= 1 learnable queries).

        predictions = []
        level = 0
        class_logits, mask_embed = self._predict(queries)
        masks = self._full_masks(mask_embed, mask_features) if all_layer_masks else None
        predictions.append((class_logits, masks))
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            assignment_logits = torch.einsum("bqc,bchw->bqhw", mask_embed, prepared.level_mask_features[level]).flatten(2)
            queries = self.cross_attention_layers[layer](
                queries, prepared.memory[level], prepared.memory_pos[level], assignment_logits, padding
            )
            queries = self.self_attention_layers[layer](queries, query_pos, key_padding_mask=padding)
            queries = self.ffn_layers[layer](queries)
            class_logits, mask_embed = self._predict(queries)
            last = layer == self.num_layers - 1
            masks = self._full_masks(mask_embed, mask_features) if (all_layer_masks or last) else None
            predictions.append((class_logits, masks))

        if self.num_layers == 0:  # degenerate config: the initial prediction is the output
            predictions[-1] = (class_logits, self._full_masks(mask_embed, mask_features))
        final_logits, final_masks = predictions[-1]
        return {
            "pred_logits": final_logits,
            "pred_masks": final_masks,
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]] if all_layer_masks else [],
            "query_embeddings": queries,
            "query_padding_mask": padding,
        }

    def _predict(self, queries: torch.Tensor):
        normed = self.decoder_norm(queries)
        return self.class_embed(normed), self.mask_embed(normed)

    @staticmethod
    def _full_masks(mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
