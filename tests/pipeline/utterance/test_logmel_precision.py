"""The log-mel front runs in fp32 under bf16 autocast (training) exactly as without it (extraction),
and the mel timer still measures the front."""

from __future__ import annotations

import pytest
import torch

from pipeline.encoders.network import build_encoder
from pipeline.utterance.embed import FrontTimer, StageClock


def _wave(n=2, seconds=0.5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, int(16000 * seconds), generator=g) * 0.1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_logmel_is_fp32_under_bf16_autocast(device):
    front = build_encoder("audio", seed=0).front.to(device)
    wave = _wave().to(device)
    plain = front(wave)
    with torch.autocast(device, dtype=torch.bfloat16):
        mixed = front(wave)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_front_timer_counts_the_mel(device):
    enc = build_encoder("audio", seed=0).to(device).eval()
    clock = StageClock()
    timer = FrontTimer(enc, clock)
    with torch.no_grad():
        enc(_wave().to(device))
    timer.remove()
    assert clock.seconds["mel"] > 0
