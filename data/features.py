"""Log-mel filterbank features, Kaldi-compatible, in torch; CMN; SpecAugment.

This module owns the front end: sample rate, window, hop, mel bins, and the only frames <-> samples formula
in the project. Training, inference and train_sort all go through `FrontEnd`.

`fbank` follows Kaldi's compute-fbank-feats (feature-window.cc, mel-computations.cc) option by option, and
tests/test_features.py checks it against Kaldi's output (../shared/fixtures/kaldi_fbank.npz). Kaldi reads
16-bit PCM as integers, so waves in [-1, 1] are scaled by 32768 first: the log energies (and the dither
amplitude) are then on Kaldi's scale. Per frame: optional dither, remove the DC offset, pre-emphasis (the
first sample is pre-emphasised against itself), window, zero-pad to a power of two, power spectrum, mel
filterbank, log (floored at float32 epsilon). Energy is not computed (use_energy=false), so energy_floor has
no effect here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

EPSILON = torch.finfo(torch.float32).eps  # Kaldi's log floor (std::numeric_limits<float>::epsilon())
INT16_SCALE = 32768.0


@dataclass(frozen=True)
class FbankOptions:
    """Kaldi's option names and meaning (FrameExtractionOptions + MelBanksOptions)."""
    sample_rate: int = 16000  # Hz
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop
    num_mel_bins: int = 80
    window_type: str = "hamming"  # the project's default; Kaldi's own default is "povey"
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    low_freq: float = 20.0  # Hz, lower edge of the first mel bin
    high_freq: float = 0.0  # Hz, upper edge of the last bin; <= 0 means Nyquist + high_freq
    snip_edges: bool = True  # True: only whole frames; False: reflect at the edges, round(N / shift) frames

    @property
    def frame_length(self) -> int:  # samples
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:  # samples
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        n = self.frame_length
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n


def num_samples_for_frames(num_frames: int, opts: FbankOptions) -> int:
    """Samples that give exactly `num_frames` frames (snip_edges): (T - 1) * shift + length."""
    return (num_frames - 1) * opts.frame_shift + opts.frame_length


def num_frames_for_samples(num_samples: int, opts: FbankOptions) -> int:
    if not opts.snip_edges:
        return (num_samples + opts.frame_shift // 2) // opts.frame_shift
    if num_samples < opts.frame_length:
        return 0
    return 1 + (num_samples - opts.frame_length) // opts.frame_shift


def window(opts: FbankOptions) -> Tensor:
    """The analysis window, (frame_length,) float32. Kaldi builds its tables in float (BaseFloat), and
    matching Kaldi's output to 1e-3 on low-energy bins needs the same float32 rounding, not float64."""
    n = opts.frame_length
    if opts.window_type == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    if opts.window_type == "hanning":
        return torch.hann_window(n, periodic=False, dtype=torch.float32)
    if opts.window_type == "povey":  # Hann raised to 0.85
        return torch.hann_window(n, periodic=False, dtype=torch.float32).pow(0.85)
    if opts.window_type == "rectangular":
        return torch.ones(n, dtype=torch.float32)
    raise ValueError(f"unknown window_type '{opts.window_type}'; choose hamming, hanning, povey or rectangular")


def mel_scale(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_banks(opts: FbankOptions) -> Tensor:
    """Kaldi's triangular filters, equally spaced on the mel scale, as (fft_size // 2 + 1, num_mel_bins)
    float32. A filter is zero outside (left, right) mel; the Nyquist bin gets no weight (Kaldi's banks
    cover fft_size / 2 bins)."""
    nyquist = 0.5 * opts.sample_rate
    high = opts.high_freq if opts.high_freq > 0 else nyquist + opts.high_freq
    if not 0 <= opts.low_freq < high <= nyquist:
        raise ValueError(f"mel banks need 0 <= low_freq < high_freq <= Nyquist, got {opts.low_freq}, {high}")
    mel_low, mel_high = mel_scale(opts.low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (opts.num_mel_bins + 1)
    index = torch.arange(opts.num_mel_bins, dtype=torch.float32)[:, None]  # (M, 1)
    left, center, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    bin_hz = opts.sample_rate / opts.fft_size
    mel = 1127.0 * torch.log(1.0 + bin_hz * torch.arange(opts.fft_size // 2, dtype=torch.float32) / 700.0)[None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)  # (M, K)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(weights, (0, 1)).T.contiguous()  # (K + 1, M), Nyquist column zero


def frames(wave: Tensor, opts: FbankOptions) -> Tensor:
    """(B, N) -> (B, T, frame_length), Kaldi's frame extraction (a strided view for snip_edges)."""
    length, shift = opts.frame_length, opts.frame_shift
    num_samples = wave.shape[-1]
    num_frames = num_frames_for_samples(num_samples, opts)
    if num_frames == 0:
        raise ValueError(f"a waveform of {num_samples} samples is shorter than one {length}-sample frame")
    if not opts.snip_edges:
        # Kaldi: frame t starts at t * shift + shift/2 - length/2, samples outside [0, N) reflected
        pad_left = length // 2 - shift // 2
        pad_right = max(0, (num_frames - 1) * shift + length - pad_left - num_samples)
        left = wave[:, :pad_left].flip(-1)
        right = wave[:, num_samples - pad_right:].flip(-1)
        wave = torch.cat([left, wave, right], dim=-1)
    return wave.unfold(-1, length, shift)[:, :num_frames]


def fbank(wave: Tensor, opts: FbankOptions, *, dither: float = 0.0, generator: torch.Generator | None = None,
          window_: Tensor | None = None, banks: Tensor | None = None) -> Tensor:
    """Log-mel filterbank of waves in [-1, 1]: (B, N) -> (B, T, F), or (N,) -> (T, F). Always float32.
    `dither` is Kaldi's (Gaussian, in int16 units); `window_` and `banks` are precomputed tables, if any."""
    single = wave.dim() == 1
    with torch.autocast(wave.device.type, enabled=False):
        x = frames(wave.float().reshape(-1, wave.shape[-1]) * INT16_SCALE, opts)  # (B, T, L)
        if dither > 0:
            x = x + dither * torch.randn(x.shape, generator=generator, device=x.device)
        if opts.remove_dc_offset:
            x = x - x.mean(dim=-1, keepdim=True)
        if opts.preemphasis:
            previous = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
            x = x - opts.preemphasis * previous
        x = x * (window(opts).to(x.device) if window_ is None else window_)
        spectrum = torch.fft.rfft(x, n=opts.fft_size).abs().pow(2)  # (B, T, fft_size // 2 + 1)
        mel = spectrum @ (mel_banks(opts).to(x.device) if banks is None else banks)  # (B, T, F)
        feats = torch.log(torch.clamp(mel, min=EPSILON))
    return feats[0] if single else feats


class SpecAugment(nn.Module):
    """SpecAugment's frequency and time masks (Park et al., Interspeech 2019), without time warping (which
    the speaker-verification recipes drop). Each utterance gets its own masks; a mask's width is uniform in
    [0, width]. Masked values are set to 0: after CMN that is the utterance mean."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _masks(batch: int, size: int, count: int, width: int, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
        """(B, size) boolean: the union of `count` random bands of width in [0, width] per row."""
        if count == 0 or width == 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        widths = torch.randint(0, width + 1, (batch, count, 1), generator=generator, device=device)
        starts = (torch.rand((batch, count, 1), generator=generator, device=device)
                  * (size - widths + 1).clamp(min=1)).long()
        position = torch.arange(size, device=device)  # (size,)
        return ((position >= starts) & (position < starts + widths)).any(dim=1)

    def forward(self, feats: Tensor, generator: torch.Generator | None = None) -> Tensor:  # (B, T, F)
        if not self.training:
            return feats
        batch, num_frames, num_bins = feats.shape
        freq = self._masks(batch, num_bins, self.freq_masks, self.freq_width, generator, feats.device)  # (B, F)
        time = self._masks(batch, num_frames, self.time_masks, self.time_width, generator, feats.device)  # (B, T)
        mask = freq[:, None, :] | time[:, :, None]  # (B, T, F)
        return feats.masked_fill(mask, 0.0)


class FrontEnd(nn.Module):
    """Waveforms (B, N) in [-1, 1] -> features (B, T, F): fbank, CMN, and in training mode dither and
    SpecAugment. The window and mel matrix are buffers, so `.to(device)` moves them."""

    def __init__(self, opts: FbankOptions, *, dither: float = 0.0, cmn: bool = True,
                 spec_augment: SpecAugment | None = None):
        super().__init__()
        self.opts, self.dither, self.cmn = opts, dither, cmn
        self.spec_augment = spec_augment
        self.register_buffer("window", window(opts), persistent=False)
        self.register_buffer("banks", mel_banks(opts), persistent=False)

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        feats = fbank(wave, self.opts, dither=self.dither if self.training else 0.0, generator=generator,
                      window_=self.window, banks=self.banks)  # (B, T, F), float32
        if self.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        if self.spec_augment is not None and self.training:
            feats = self.spec_augment(feats, generator)
        return feats
