"""The image classifier: two conv blocks and a small dense head, on flat height*width input."""
from __future__ import annotations

import torch
from torch import nn


class CNNClassifier(nn.Module):
    def __init__(self, height: int = 28, width: int = 28, n_classes: int = 10):
        super().__init__()
        self.height, self.width = height, width
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout(0.25))
        with torch.no_grad():
            flat = int(self.features(torch.zeros(1, 1, height, width)).numel())
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.4), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, batch x n_classes."""
        return self.classifier(self.features(x.view(-1, 1, self.height, self.width)))
