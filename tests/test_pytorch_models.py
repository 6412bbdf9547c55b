"""Whole PyTorch architectures converted by coremltools to neuralnetwork agree with PyTorch.

The reference is PyTorch itself: each network is traced, converted with coremltools, run by the
workbench runtime, and compared with the module's own output within 1e-4 of the output scale.
"""
import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import workbench as wb

torch.manual_seed(0)


def convert(module, *examples):
    import coremltools as ct
    module = module.eval()
    traced = torch.jit.trace(module, examples)
    inputs = [ct.TensorType(name=f"in{i}", shape=x.shape) for i, x in enumerate(examples)]
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(traced, inputs=inputs, convert_to="neuralnetwork")
    return mlmodel.get_spec()


def agree(module, *examples, tol=1e-4):
    spec = convert(module, *examples)
    model = wb.load(spec)
    with torch.no_grad():
        expected = module(*examples)
    expected = expected if isinstance(expected, tuple) else (expected,)
    outputs = model.predict({f"in{i}": x.numpy() for i, x in enumerate(examples)})
    names = [f.name for f in spec.description.output]
    for name, ref in zip(names, expected):
        ref = ref.numpy()
        got = outputs[name]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got - ref).max()) / scale
        assert err <= tol, f"{name}: max error {err:.2e} relative to output scale {scale:.3g}"
    return model


class ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 32, 3, 1, 1, dilation=1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = F.relu(self.down(x) + self.block2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                                  nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                                  nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(16), InvertedResidual(16),
                                    nn.Conv2d(16, 16, 3, 2, 1, groups=4), nn.Hardsigmoid())
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return torch.softmax(self.head(x.mean(dim=(2, 3))), dim=1)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.LeakyReLU(0.1))
        self.up1 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.up1(self.mid(e2))
        d1 = self.dec1(torch.cat([m, e2], dim=1))
        up = F.interpolate(d1, scale_factor=2, mode="bilinear", align_corners=False)
        up2 = F.interpolate(d1, size=(32, 32), mode="bilinear", align_corners=True)   # constant: see Attention
        return torch.sigmoid(self.out(torch.cat([up, up2], dim=1)))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=1)
        self.gru = nn.GRU(12, 8)
        self.bilstm = nn.LSTM(8, 5, bidirectional=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.bilstm(y)
        return self.fc(y)


class Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ELU(),
                                 nn.MaxPool1d(2), nn.Conv1d(16, 16, 3, dilation=2, padding=2), nn.Tanh(),
                                 nn.AvgPool1d(2), nn.Conv1d(16, 8, 3, stride=2, groups=8), nn.Softplus())

    def forward(self, x):
        return self.net(x)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.gnorm = nn.GroupNorm(2, 8)
        self.lnorm = nn.LayerNorm([8, 12, 12])
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.conv(x)
        x = F.relu(self.inorm(x))
        x = self.gnorm(x)
        x = F.silu(self.lnorm(x))
        return F.normalize(self.bn(x), dim=1)


class Attention(nn.Module):
    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads, self.d = heads, d
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):                                   # x: [B=2, T=10, d]
        # Sizes are constants: coremltools 9 cannot convert int() of traced shapes under torch 2.13.
        b, t, d, dh = 2, 10, self.d, self.d // self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / dh ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class Activations(nn.Module):
    def forward(self, x):
        return torch.stack([F.elu(x), F.leaky_relu(x, 0.2), torch.tanh(x), torch.sigmoid(x), F.softsign(x),
                            F.softplus(x), F.relu6(x), F.hardtanh(x, -0.5, 0.5), torch.exp(x) / 10,
                            torch.clamp(x, -1, 1), F.gelu(x), torch.abs(x).sqrt(), torch.erf(x)], dim=1).sum(1)


CASES = {
    "residual_cnn": (ResidualCNN, [(1, 3, 64, 64)]),
    "mobile_depthwise": (MobileNetish, [(1, 3, 32, 32)]),
    "unet": (UNet, [(1, 3, 32, 32)]),
    "lstm_gru": (Recurrent, [(7, 2, 6)]),
    "conv1d": (Conv1d, [(2, 4, 40)]),
    "normalization": (Norms, [(2, 3, 12, 12)]),
    "attention": (Attention, [(2, 10, 16)]),
    "activations": (Activations, [(3, 17)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_agrees_with_pytorch(name):
    cls, shapes = CASES[name]
    torch.manual_seed(0)
    module = cls().eval()
    for m in module.modules():                     # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    examples = [torch.randn(*s) for s in shapes]
    agree(module, *examples)
