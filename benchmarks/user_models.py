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


class DigitsNet(nn.Module):
    """A small CNN for 8 x 8 grey-scale digits (benchmarks/digits_npz.py): the held-out data set check of issue 12."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)                         # 8 x 8
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)                                         # -> 4 x 4
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def digits_net():
    return DigitsNet()
