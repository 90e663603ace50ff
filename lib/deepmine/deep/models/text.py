"""Text classifiers over token ids: a TextCNN (Kim 2014) and a bidirectional GRU with attention
pooling. Input is the flat float vector every model takes here: a review's token ids (0 pads),
`max_tokens` of them; the logits are batch x n_classes.

TextCNN (Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014): embedding,
one 1-d convolution per filter width (3, 4, 5; 100 maps each), ReLU, max over time, dropout 0.5,
a linear layer. Padding positions are masked out of the max.

TextRNN: embedding, a bidirectional GRU, and attention pooling (a learned query scoring each
position's state, softmax over the real tokens, the weighted sum; Yang et al. 2016, "Hierarchical
Attention Networks", word level), dropout, a linear layer. `attention(x)` returns the weights, so a
review's most attended tokens can be shown.
"""
from __future__ import annotations

import torch
from torch import nn

PAD = 0


class _Embedded(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, freeze_embeddings: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.freeze_embeddings = freeze_embeddings
        self.embedding.weight.requires_grad_(not freeze_embeddings)

    def load_embeddings(self, matrix: torch.Tensor) -> None:
        """Start from pretrained vectors (vocab_size x embedding_dim; the padding row zero)."""
        with torch.no_grad():
            self.embedding.weight.copy_(matrix)
            self.embedding.weight[PAD].zero_()

    @staticmethod
    def ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = x.round().long()
        return ids, ids != PAD


class TextCNN(_Embedded):
    def __init__(self, vocab_size: int, embedding_dim: int = 64, n_classes: int = 2,
                 widths: tuple[int, ...] = (3, 4, 5), maps: int = 100, dropout: float = 0.5,
                 freeze_embeddings: bool = False):
        super().__init__(vocab_size, embedding_dim, freeze_embeddings)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, maps, w, padding=w - 1) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(maps * len(widths), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, real = self.ids(x)
        e = self.embedding(ids).transpose(1, 2)  # batch x dim x time
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(e))[:, :, :ids.shape[1]]  # each output aligned to its first token
            h = h.masked_fill(~real.unsqueeze(1), float("-inf"))
            h = h.max(dim=2).values
            pooled.append(torch.where(torch.isfinite(h), h, torch.zeros_like(h)))
        return self.out(self.dropout(torch.cat(pooled, dim=1)))


class TextRNN(_Embedded):
    def __init__(self, vocab_size: int, embedding_dim: int = 64, n_classes: int = 2,
                 hidden: int = 64, dropout: float = 0.5, freeze_embeddings: bool = False):
        super().__init__(vocab_size, embedding_dim, freeze_embeddings)
        self.gru = nn.GRU(embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * hidden, 2 * hidden)
        self.query = nn.Linear(2 * hidden, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, n_classes)

    def _states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, real = self.ids(x)
        real = real.clone()
        real[:, 0] |= ~real.any(dim=1)  # a review without tokens attends to its first pad
        lengths = real.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(ids), lengths,
                                                   batch_first=True, enforce_sorted=False)
        states, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                     total_length=ids.shape[1])
        return states, real

    def _weights(self, states: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        scores = self.query(torch.tanh(self.project(states))).squeeze(2)
        return torch.softmax(scores.masked_fill(~real, float("-inf")), dim=1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights, batch x max_tokens (zero on padding; each row sums to 1)."""
        states, real = self._states(x)
        return self._weights(states, real)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, real = self._states(x)
        pooled = (self._weights(states, real).unsqueeze(2) * states).sum(dim=1)
        return self.out(self.dropout(pooled))
