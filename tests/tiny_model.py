"""The smallest model the trainer-integration tests train (imported by the tests and by the
scripts they run in subprocesses, with tests/ on PYTHONPATH)."""
import torch


class Tiny(torch.nn.Module):
    """(N,3,256,192) -> (N,17,64,48): one strided conv, enough to take a step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 17, 4, stride=4)

    def forward(self, x):
        return self.conv(x)
