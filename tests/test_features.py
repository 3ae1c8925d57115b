"""The front end: Kaldi fbank against the reference fixture, framing, dither, CMN, SpecAugment, autocast."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from data.features import (
    FbankOptions,
    FrontEnd,
    SpecAugment,
    fbank,
    kaldi_window,
    mel_matrix,
    num_frames_for_samples,
    num_samples_for_frames,
)

log = logging.getLogger(__name__)

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/kaldi_fbank.npz"  # the repo's sibling shared/
CONFIGS = {  # shared/fixtures/README.md: options that differ from Kaldi's defaults (dither 0, energy unused)
    "kaldi_default_80": FbankOptions(num_mel_bins=80, window_type="povey"),
    "hamming_80": FbankOptions(num_mel_bins=80, window_type="hamming"),
    "povey_40_nosnip": FbankOptions(num_mel_bins=40, window_type="povey", snip_edges=False),
    "hamming_80_lowhigh": FbankOptions(num_mel_bins=80, window_type="hamming", low_freq=20, high_freq=7600),
}


@pytest.fixture(scope="module")
def kaldi() -> dict[str, np.ndarray]:
    if not FIXTURE.is_file():
        pytest.skip(f"Kaldi reference fixture absent: {FIXTURE}")
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def speech_like(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """(batch, num_samples) noise under a 4 Hz envelope, peak well inside [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    envelope = 0.2 + torch.sin(torch.arange(num_samples) * 2 * torch.pi * 4 / 16000).abs()
    return 0.1 * torch.randn(batch, num_samples, generator=g) * envelope


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_kaldi_fixture(kaldi, config):
    names = sorted(key.split("/", 1)[1] for key in kaldi if key.startswith("wave/"))
    assert len(names) == 4
    for name in names:
        ref = kaldi[f"fbank/{name}/{config}"]
        out = fbank(torch.from_numpy(kaldi[f"wave/{name}"]), CONFIGS[config]).numpy()
        assert out.shape == ref.shape, name
        error = np.abs(out - ref)
        log.info("%s %s: max abs error %.2e", config, name, error.max())
        assert error[ref >= 8].max(initial=0.0) <= 1e-3, name
        assert error[ref >= 0].max(initial=0.0) <= 0.2, name


def test_frontend_is_fbank_in_eval_mode(kaldi):
    """The module path (buffers, no CMN) gives the same numbers as the function on the fixture."""
    wave = torch.from_numpy(kaldi["wave/vowel_1.2345s"])[None]  # (1, N)
    for opts in CONFIGS.values():
        front = FrontEnd(opts, dither=1.0, cmn=False, spec_augment=SpecAugment()).eval()
        torch.testing.assert_close(front(wave), fbank(wave, opts), rtol=0, atol=0)


def kaldi_loop(wave: np.ndarray, opts: FbankOptions) -> np.ndarray:
    """Kaldi's per-frame C++ loops, transcribed literally in float64 (tables from the module): (N,) -> (T, F)."""
    length, shift, n = opts.frame_length, opts.frame_shift, len(wave)
    window, mel = kaldi_window(opts).double().numpy(), mel_matrix(opts).double().numpy()
    feats = []
    for t in range(num_frames_for_samples(n, opts)):
        start = t * shift if opts.snip_edges else t * shift + shift // 2 - length // 2
        frame = np.empty(length)
        for i in range(length):  # ExtractWindow
            s = start + i
            while s < 0 or s >= n:
                s = -s - 1 if s < 0 else 2 * n - 1 - s
            frame[i] = wave[s] * 32768.0
        frame -= frame.mean()
        for i in range(length - 1, 0, -1):  # Preemphasize
            frame[i] -= opts.preemphasis * frame[i - 1]
        frame[0] -= opts.preemphasis * frame[0]
        power = np.abs(np.fft.rfft(frame * window, n=opts.padded_window_size)) ** 2
        feats.append(np.log(np.maximum(power @ mel, np.finfo(np.float32).eps)))
    return np.array(feats)


@pytest.mark.parametrize("num_samples", [100, 401, 1234])  # 100: reflection folds more than once
def test_edges_match_kaldi_loops(num_samples):
    wave = speech_like(1, num_samples, seed=3)[0]
    for opts in (CONFIGS["povey_40_nosnip"], FbankOptions(snip_edges=False), FbankOptions()):
        if num_frames_for_samples(num_samples, opts) == 0:
            continue
        ref = kaldi_loop(wave.double().numpy(), opts)
        np.testing.assert_allclose(fbank(wave, opts).numpy(), ref, rtol=0, atol=1e-3)


def test_batched_equals_per_item():
    waves = speech_like(3, 16000)
    for opts in (FbankOptions(), CONFIGS["povey_40_nosnip"]):
        batched = fbank(waves, opts)  # (B, T, F)
        assert batched.shape == (3, num_frames_for_samples(16000, opts), opts.num_mel_bins)
        for i in range(3):
            torch.testing.assert_close(batched[i], fbank(waves[i], opts), rtol=0, atol=1e-4)


def test_frames_samples_round_trip():
    opts = FbankOptions()
    assert (opts.frame_length, opts.frame_shift, opts.padded_window_size) == (400, 160, 512)
    assert num_samples_for_frames(200, opts) == 32240
    for snip_edges in (True, False):
        opts = FbankOptions(snip_edges=snip_edges)
        for frames in (1, 2, 3, 200, 301):
            n = num_samples_for_frames(frames, opts)
            assert num_frames_for_samples(n, opts) == frames  # enough samples ...
            assert num_frames_for_samples(n - 1, opts) == frames - 1  # ... and the fewest
            assert fbank(torch.zeros(n), opts).shape == (frames, 80)
    assert num_frames_for_samples(401, FbankOptions(snip_edges=False)) == 3  # round(401 / 160)


def test_too_short_and_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="399 samples is shorter than one frame"):
        fbank(torch.zeros(2, 399), FbankOptions())
    with pytest.raises(ValueError, match="unknown window_type 'hann'"):
        FbankOptions(window_type="hann")
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mel_matrix(FbankOptions(num_mel_bins=200))
    with pytest.raises(ValueError, match="high_freq"):
        FbankOptions(high_freq=9000)
    with pytest.raises(ValueError, match="float"):
        fbank(torch.zeros(16000, dtype=torch.int16), FbankOptions())
    with pytest.raises(ValueError, match="dither"):
        FrontEnd(FbankOptions(dither=1.0), dither=1.0, cmn=True, spec_augment=None)


def test_dither_only_in_training():
    front = FrontEnd(FbankOptions(), dither=1.0, cmn=False, spec_augment=None)
    wave = speech_like(2, 8000)
    front.eval()
    a = front(wave, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, front(wave, generator=torch.Generator().manual_seed(1)))  # deterministic
    assert torch.equal(a, fbank(wave, FbankOptions()))
    front.train()
    b = front(wave, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)  # dithered
    assert torch.equal(b, front(wave, generator=torch.Generator().manual_seed(0)))  # seeded
    assert not torch.equal(b, front(wave, generator=torch.Generator().manual_seed(1)))
    silence = front(torch.zeros(1, 8000), generator=torch.Generator().manual_seed(0))
    assert silence.min() > np.log(np.finfo(np.float32).eps)  # dither lifts digital silence off the floor


def test_frontend_writes_only_its_own_buffers():
    """The in-place passes of _log_mel: the caller's wave is untouched, and the dithered features are the
    step-by-step out-of-place formulas' (same noise) bit for bit."""
    wave = speech_like(2, 8000)
    kept = wave.clone()
    opts = FbankOptions()
    for snip in (True, False):
        front = FrontEnd(dataclasses.replace(opts, snip_edges=snip), dither=1.0, cmn=True, spec_augment=None)
        front.eval()(wave)
        front.train()(wave, generator=torch.Generator().manual_seed(0))
        assert torch.equal(wave, kept)
    frames = (wave * 32768.0).unfold(-1, opts.frame_length, opts.frame_shift)  # (B, T, L)
    frames = torch.add(frames, torch.randn(frames.shape, generator=torch.Generator().manual_seed(0)), alpha=1.0)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    frames = frames - opts.preemphasis * torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    spectrum = torch.fft.rfft(frames * kaldi_window(opts), n=opts.padded_window_size)
    power = spectrum.real.square() + spectrum.imag.square()
    expected = torch.matmul(power, mel_matrix(opts)).clamp_min(np.finfo(np.float32).eps).log()
    front = FrontEnd(opts, dither=1.0, cmn=False, spec_augment=None).train()
    assert torch.equal(front(wave, generator=torch.Generator().manual_seed(0)), expected)


def test_cmn_zero_mean_over_time():
    front = FrontEnd(FbankOptions(), dither=1.0, cmn=True, spec_augment=None).eval()
    feats = front(speech_like(2, 16000))  # (B, T, F)
    torch.testing.assert_close(feats.mean(dim=1), torch.zeros(2, 80), rtol=0, atol=1e-4)


def masked_bands(mask: torch.Tensor) -> list[list[int]]:
    """Widths of the runs of True in each row of a (B, S) bool mask."""
    widths = []
    for row in mask.tolist():
        runs, run = [], 0
        for bit in row + [False]:
            if bit:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        widths.append(runs)
    return widths


def test_spec_augment_widths_and_independence():
    aug = SpecAugment(freq_masks=1, freq_width=8, time_masks=1, time_width=10).train()
    masked = aug(torch.ones(256, 200, 80), generator=torch.Generator().manual_seed(0)) == 0  # (B, T, F)
    freq, time = masked.all(dim=1), masked.all(dim=2)  # (B, F) masked bins, (B, T) masked frames
    assert torch.equal(masked, freq[:, None, :] | time[:, :, None])  # only whole bands are masked
    freq_widths = [sum(w) for w in masked_bands(freq)]
    time_widths = [sum(w) for w in masked_bands(time)]
    assert all(len(w) <= 1 for w in masked_bands(freq) + masked_bands(time))  # one contiguous band each
    assert max(freq_widths) == 8 and max(time_widths) == 10  # the maxima are reached ...
    assert freq_widths.count(0) > 0 and time_widths.count(0) > 0  # ... and so is 0
    assert len({tuple(row.nonzero().flatten().tolist()) for row in freq}) > 50  # independent per utterance


def test_spec_augment_probability_gates_whole_utterances():
    feats = torch.randn(2000, 50, 80)
    always = SpecAugment(1, 8, 1, 10).train()(feats, generator=torch.Generator().manual_seed(0))
    gated = SpecAugment(1, 8, 1, 10, prob=0.6).train()(feats, generator=torch.Generator().manual_seed(0))
    untouched = (gated == feats).flatten(1).all(dim=1)  # (B,) utterances left whole
    # the same band draws (the gate is drawn after them): a masked utterance has exactly the ungated masks
    assert torch.equal(gated[~untouched], always[~untouched])
    hit = ((always != feats).flatten(1).any(dim=1) & ~untouched).float().mean()
    could_hit = (always != feats).flatten(1).any(dim=1).float().mean()
    assert abs(hit / could_hit - 0.6) < 0.05  # masked with probability 0.6
    with pytest.raises(ValueError, match="probability"):
        SpecAugment(prob=1.5)


def test_spec_augment_training_only_and_seeded():
    feats = torch.randn(4, 200, 80)
    aug = SpecAugment()
    assert torch.equal(aug.eval()(feats, generator=torch.Generator().manual_seed(0)), feats)
    aug.train()
    a = aug(feats, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, aug(feats, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, aug(feats, generator=torch.Generator().manual_seed(1)))
    assert (a == 0).any() and not (feats == 0).any()
    short = aug(torch.randn(2, 3, 80), generator=torch.Generator().manual_seed(0))  # T < time_width
    assert short.shape == (2, 3, 80)


def test_frontend_masks_only_in_training():
    front = FrontEnd(FbankOptions(), dither=0.0, cmn=True, spec_augment=SpecAugment(2, 8, 2, 10))
    wave = speech_like(2, 16000)
    clean = front.eval()(wave)
    masked = front.train()(wave, generator=torch.Generator().manual_seed(0))
    assert not (clean == 0).any() and (masked == 0).any()
    assert torch.equal(masked[masked != 0], clean[masked != 0])


def test_frontend_under_bf16_autocast_is_float32():
    front = FrontEnd(FbankOptions(), dither=1.0, cmn=True, spec_augment=SpecAugment()).eval()
    wave = speech_like(2, 16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = front(wave)
        from_bf16_input = front(wave.bfloat16())
    assert out.dtype == torch.float32 and from_bf16_input.dtype == torch.float32
    assert out.isfinite().all() and from_bf16_input.isfinite().all()
    torch.testing.assert_close(out, front(wave), rtol=0, atol=0)  # autocast changes nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    front = FrontEnd(FbankOptions(), dither=1.0, cmn=True, spec_augment=SpecAugment())
    wave = speech_like(4, 32240)
    cpu = front.eval()(wave)
    front = front.to("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        gpu = front(wave.cuda())
    assert gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)
    trained = front.train()(wave.cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    assert trained.isfinite().all()
    torch.testing.assert_close(fbank(wave.cuda(), FbankOptions()).cpu(), fbank(wave, FbankOptions()), rtol=0, atol=1e-3)
