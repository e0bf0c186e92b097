"""Small building blocks shared by the decoder, the pixel decoder, the aggregator and the click encoder."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerSettings:
    """Depth and width of a stack of transformer layers (the pixel decoder's encoder, the slice decoder)."""

    num_layers: int
    num_heads: int
    dim_feedforward: int  # hidden width of each layer's FFN
    dropout: float = 0.0


def feedforward(d_model: int, dim_feedforward: int, dropout: float = 0.0) -> nn.Sequential:
    """The transformer FFN, Linear -> ReLU -> Dropout -> Linear (the residual and norm are the caller's)."""
    return nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim_feedforward, d_model))


def xavier_init_(*layers: nn.Linear) -> None:
    """Xavier-uniform weights and zero biases, in place: the init of the attention projections."""
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
