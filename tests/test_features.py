"""The front end against Kaldi's own output, and the behaviour of CMN, dither and SpecAugment."""

from pathlib import Path

import numpy as np
import pytest
import torch

from data.features import FbankOptions, FrontEnd, SpecAugment, fbank, num_frames_for_samples, num_samples_for_frames

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kaldi_fbank.npz"
CONFIGS = {  # ../shared/fixtures/README.md: options that differ from Kaldi's defaults
    "kaldi_default_80": FbankOptions(num_mel_bins=80, window_type="povey"),
    "hamming_80": FbankOptions(num_mel_bins=80, window_type="hamming"),
    "povey_40_nosnip": FbankOptions(num_mel_bins=40, window_type="povey", snip_edges=False),
    "hamming_80_lowhigh": FbankOptions(num_mel_bins=80, window_type="hamming", low_freq=20, high_freq=7600),
}


@pytest.fixture(scope="module")
def kaldi():
    if not FIXTURE.is_file():
        pytest.skip(f"Kaldi reference features not found at {FIXTURE}")
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_kaldi(kaldi, config):
    waves = [k.split("/", 1)[1] for k in kaldi if k.startswith("wave/")]
    assert len(waves) == 4
    for name in waves:
        ref = kaldi[f"fbank/{name}/{config}"]
        out = fbank(torch.from_numpy(kaldi[f"wave/{name}"]), CONFIGS[config]).numpy()
        assert out.shape == ref.shape, name
        error = np.abs(out - ref)
        assert error[ref >= 8].max(initial=0) <= 1e-3, name
        assert error[ref >= 0].max() <= 0.2, name


def test_batched_equals_single():
    opts = FbankOptions()
    waves = torch.randn(3, 16000) * 0.1
    batched = fbank(waves, opts)
    for i in range(3):
        torch.testing.assert_close(batched[i], fbank(waves[i], opts), rtol=0, atol=1e-4)


def test_frames_samples_formula():
    opts = FbankOptions()
    assert num_samples_for_frames(200, opts) == 32240
    for frames in (1, 2, 200, 301):
        n = num_samples_for_frames(frames, opts)
        assert num_frames_for_samples(n, opts) == frames and num_frames_for_samples(n - 1, opts) == frames - 1
        assert fbank(torch.zeros(n), opts).shape == (frames, 80)
    with pytest.raises(ValueError, match="shorter than one 400-sample frame"):
        fbank(torch.zeros(399), opts)


def test_frontend_dither_cmn_and_modes():
    front = FrontEnd(FbankOptions(), dither=1.0, cmn=True, spec_augment=SpecAugment(2, 8, 2, 10))
    wave = torch.randn(2, 8000) * 0.1
    front.eval()
    a, b = front(wave), front(wave)
    assert torch.equal(a, b)  # no dither, no masks in eval mode
    torch.testing.assert_close(a.mean(dim=1), torch.zeros(2, 80), rtol=0, atol=1e-4)  # CMN
    front.train()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    c, d = front(wave, generator=g1), front(wave, generator=g2)
    assert torch.equal(c, d)  # seeded: reproducible
    assert not torch.equal(c, front(wave, generator=torch.Generator().manual_seed(1)))
    silent = torch.zeros(1, 8000)  # dither keeps log energies finite and above the floor on silence
    assert front(silent, generator=g1).isfinite().all()


def test_spec_augment_masks_within_bounds():
    aug = SpecAugment(freq_masks=1, freq_width=8, time_masks=1, time_width=10).train()
    feats = torch.ones(64, 200, 80)
    out = aug(feats, generator=torch.Generator().manual_seed(0))
    masked = out == 0
    freq_rows = masked.all(dim=1).sum(dim=1)  # fully masked mel bins per utterance
    time_rows = masked.all(dim=2).sum(dim=1)  # fully masked frames per utterance
    assert freq_rows.max() <= 8 and time_rows.max() <= 10 and freq_rows.float().mean() > 2
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masked.all(dim=1)}) > 10  # per utterance
    assert torch.equal(aug.eval()(feats), feats)


def test_frontend_under_bf16_autocast_stays_float32():
    front = FrontEnd(FbankOptions(), cmn=True).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = front(torch.randn(1, 16000) * 0.1)
    assert out.dtype == torch.float32 and out.isfinite().all()
