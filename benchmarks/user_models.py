"""User models for the `user-model` suite of train_suites.py: the README's "your own model" example, verbatim."""

import torch
from torch import nn


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=True)              # 28 x 28
        self.pool = nn.MaxPool2d(2)                                         # -> 14 x 14
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)    # -> 7 x 7
        self.gap = nn.AdaptiveAvgPool2d(1)                                  # global average pooling
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))           # a residual connection
        x = torch.relu(self.down(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def small_resnet():
    return SmallResNet()
