"""The SimCLR seed's model and loss code (`../shared/seeds/003_084f60e885c71fce.txt`, sections 3.1, 3.2 and
4), transcribed as printed there, as the reference the simclr twins and both `nt_xent`s are tested against.
Two lines differ: `resnet18(pretrained=False)` is our ResNet-18 with torchvision's ImageNet stem (torchvision
is not a dependency; its keys, shapes and order are torchvision's, checked against torchvision's manifest
in test_contract.py), which the seed's own lines then turn into the CIFAR encoder; and `SSL.forward` gets
the `return feature, projection` the printed code lacks (SPEC.md section 5)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_impl.resnet import resnet18 as _resnet18


def resnet18(pretrained=False):
    assert not pretrained
    return _resnet18()


class SL(nn.Module):
    def __init__(self, projection_dim=128):
        super().__init__()
        self.enc = resnet18(pretrained=False)  # load model from torchvision.models without pretrained weights.
        self.feature_dim = self.enc.fc.in_features
        # Customize for CIFAR10. Replace conv 7x7 with conv 3x3, and remove first max pooling.
        # See Section B.9 of SimCLR paper.
        self.enc.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.enc.maxpool = nn.Identity()
        self.enc.fc = nn.Identity()  # remove final fully connected layer.
        # FC
        self.linear = nn.Linear(self.feature_dim, 10)  # 10 number of class

    def forward(self, x):
        # Representaion
        feature = self.enc(x)
        # FC
        output = self.linear(feature)
        return output


class SSL(nn.Module):
    def __init__(self, projection_dim=128):
        super().__init__()
        self.enc = resnet18(pretrained=False)  # load model from torchvision.models without pretrained weights.
        self.feature_dim = self.enc.fc.in_features
        # Customize for CIFAR10. Replace conv 7x7 with conv 3x3, and remove first max pooling.
        # See Section B.9 of SimCLR paper.
        self.enc.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.enc.maxpool = nn.Identity()
        self.enc.fc = nn.Identity()  # remove final fully connected layer.
        # Add MLP projection.
        self.projection_dim = projection_dim
        self.projector = nn.Sequential(nn.Linear(self.feature_dim, 2048),
                                       nn.ReLU(),
                                       nn.Linear(2048, projection_dim))

    def forward(self, x):
        # Representaion
        feature = self.enc(x)
        # Projection head
        projection = self.projector(feature)
        return feature, projection  # not in the seed's listing


def nt_xent(x, t=0.5):
    x = F.normalize(x, dim=1)
    x_scores = (x @ x.t()).clamp(min=1e-7)  # normalized cosine similarity scores
    x_scale = x_scores / t  # scale with temperature
    # (2N-1)-way softmax without the score of i-th entry itself.
    # Set the diagonals to be large negative values, which become zeros after softmax.
    x_scale = x_scale - torch.eye(x_scale.size(0)).to(x_scale.device) * 1e5
    # targets 2N elements.
    targets = torch.arange(x.size()[0])
    targets[::2] += 1  # target of 2k element is 2k+1
    targets[1::2] -= 1  # target of 2k+1 element is 2k
    return F.cross_entropy(x_scale, targets.long().to(x_scale.device))
