"""Kaldi-compatible log-mel filterbank features in pure torch, and the project's one feature path.

`fbank` reproduces Kaldi's `compute-fbank-feats` (src/feat/feature-window.cc, feature-fbank.cc,
mel-computations.cc) with use_energy=false, use_log_fbank=true, use_power=true and no VTLN, batched over a
leading dimension. It is checked against shared/fixtures/kaldi_fbank.npz by tests/test_features.py.

Scale: waves are float in [-1, 1]; the features are those of the wave **scaled by 32768**, i.e. of the int16
samples Kaldi reads from 16-bit PCM, so the values (and `dither`, in int16 sample units) are Kaldi's.

Kaldi's definition, per frame of `frame_length` samples (ProcessWindow), in this order:
  1. dither: add `dither` * N(0, 1) to every sample of the frame (frames overlap, so a sample gets fresh
     noise in each frame it belongs to);
  2. remove DC offset: subtract the frame's mean;
  3. preemphasis: x[i] -= k * x[i - 1] for i > 0, and x[0] -= k * x[0] (the first sample uses itself);
  4. window; zero-pad to `padded_window_size` (next power of two); power spectrum |rfft|^2;
  5. triangular mel filters (mel = 1127 ln(1 + f / 700), triangles in the mel domain) over the FFT bins
     below Nyquist (Kaldi's filters never touch the Nyquist bin);
  6. log, with the filter energies floored at float32 epsilon.
Framing (snip_edges=true): frame t covers samples [t * shift, t * shift + length); frames that do not fit are
dropped. snip_edges=false: num_frames = round(N / shift) (halves up), frame t is centred on
t * shift + shift / 2, and samples outside [0, N) are mirrored with the edge sample repeated
(index -1 -> 0, N -> N - 1), repeatedly for waves shorter than the padding.

Everything is computed in float32 with autocast disabled: bfloat16's 8-bit mantissa would put ~4e-3 of
rounding on every log energy, and float16 overflows (powers of int16-scale frames reach ~1e14).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from utils import UserError

if TYPE_CHECKING:
    from config import Config

FLOAT_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's log floor: std::numeric_limits<float>::epsilon()
INT16_SCALE = 32768.0  # [-1, 1] float -> int16 sample units, as Kaldi reads 16-bit PCM


class FeatureError(UserError, ValueError):
    """Invalid feature options or a wave too short for them (a ValueError; scripts print it as one line)."""


# Kaldi's window functions (feature-window.cc): symmetric, phase 2 pi i / (frame_length - 1), i = 0..L-1.
# Built in float32 with torch's window functions, not in float64: see `kaldi_window`. Kaldi also has "sine"
# and "blackman"; the project has no use for them.
WINDOWS: dict[str, Callable[[int], Tensor]] = {
    "povey": lambda length: torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85),  # Kaldi's default
    "hamming": lambda length: torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32),
    "hanning": lambda length: torch.hann_window(length, periodic=False, dtype=torch.float32),
    "rectangular": lambda length: torch.ones(length, dtype=torch.float32),
}


@dataclass(frozen=True)
class FbankOptions:
    """Kaldi's fbank options, with Kaldi's names and semantics (only window_type's default differs).

    Left out: use_energy / energy_floor / raw_energy (the energy column is not output, so energy_floor would
    be a knob that changes nothing), use_log_fbank and use_power (always true), VTLN, htk_compat.
    """

    sample_rate: int = 16000  # Hz (Kaldi: sample_frequency)
    frame_length_ms: float = 25.0  # analysis window, ms
    frame_shift_ms: float = 10.0  # hop, ms
    num_mel_bins: int = 80  # mel filters = feature dimension F
    window_type: str = "hamming"  # a key of WINDOWS; project default (Kaldi's own default is "povey")
    preemphasis: float = 0.97  # coefficient k of x[i] - k x[i-1]; 0 = off (Kaldi: preemphasis_coefficient)
    remove_dc_offset: bool = True  # subtract each frame's mean before preemphasis
    low_freq: float = 20.0  # Hz, lower edge of the first mel filter
    high_freq: float = 0.0  # Hz, upper edge of the last mel filter; <= 0 means Nyquist + high_freq
    snip_edges: bool = True  # true: only frames that fit; false: reflect-pad, num_frames = round(N / shift)
    dither: float = 0.0  # std of Gaussian noise added per frame, int16 sample units; 0 = off
    round_to_power_of_two: bool = True  # zero-pad each frame to the next power of two for the FFT

    def __post_init__(self) -> None:
        if self.window_type not in WINDOWS:
            raise FeatureError(f"unknown window_type {self.window_type!r}; valid: {', '.join(WINDOWS)}")
        if self.sample_rate <= 0 or self.frame_length < 2 or self.frame_shift < 1:
            raise FeatureError(
                f"need sample_rate > 0, a frame of >= 2 samples and a shift of >= 1 sample; got "
                f"{self.sample_rate} Hz, {self.frame_length_ms} ms, {self.frame_shift_ms} ms"
            )
        if not 0.0 <= self.preemphasis <= 1.0 or self.dither < 0.0:
            raise FeatureError(f"need 0 <= preemphasis <= 1 and dither >= 0; got {self.preemphasis}, {self.dither}")
        if self.num_mel_bins < 3:
            raise FeatureError(f"num_mel_bins must be at least 3 (Kaldi's limit); got {self.num_mel_bins}")
        nyquist = 0.5 * self.sample_rate
        if not 0.0 <= self.low_freq < self.resolved_high_freq <= nyquist:
            raise FeatureError(
                f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz); got low_freq "
                f"{self.low_freq:g}, high_freq {self.high_freq:g} (= {self.resolved_high_freq:g} Hz)"
            )

    @property
    def frame_length(self) -> int:
        """Window length in samples; Kaldi truncates samp_freq * 0.001 * ms (WindowSize)."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def frame_shift(self) -> int:
        """Hop in samples, truncated like frame_length (WindowShift)."""
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def padded_window_size(self) -> int:
        """FFT size in samples: frame_length rounded up to a power of two, if round_to_power_of_two."""
        length = self.frame_length
        return 1 << (length - 1).bit_length() if self.round_to_power_of_two else length

    @property
    def resolved_high_freq(self) -> float:
        """high_freq in Hz, with Kaldi's convention that <= 0 is an offset from Nyquist."""
        return self.high_freq if self.high_freq > 0 else 0.5 * self.sample_rate + self.high_freq


# --- frames <-> samples: the only such formulas in the project -------------------------------------------


def num_frames_for_samples(num_samples: int, opts: FbankOptions) -> int:
    """Frames Kaldi makes from `num_samples` samples (NumFrames with flush=true)."""
    length, shift = opts.frame_length, opts.frame_shift
    if opts.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift  # round(N / shift), halves up


def num_samples_for_frames(num_frames: int, opts: FbankOptions) -> int:
    """The fewest samples that give exactly `num_frames` frames (inverse of num_frames_for_samples).

    snip_edges: (num_frames - 1) * shift + length, e.g. 200 frames of 25/10 ms at 16 kHz = 32240 samples.
    Without snip_edges: num_frames * shift - shift // 2.
    """
    if num_frames < 1:
        raise FeatureError(f"num_frames must be at least 1; got {num_frames}")
    if opts.snip_edges:
        return (num_frames - 1) * opts.frame_shift + opts.frame_length
    return num_frames * opts.frame_shift - opts.frame_shift // 2


# --- constants: window and mel matrix ---------------------------------------------------------------------


def kaldi_window(opts: FbankOptions) -> Tensor:
    """The analysis window, (frame_length,) float32, symmetric (Kaldi's FeatureWindowFunction).

    Built in float32 arithmetic: Kaldi's tables are float (BaseFloat), and the reference features agree with
    a float32-built window to ~1e-6 but with a float64-built one (rounded once) only to ~1.4e-3 on log
    energies >= 8 and ~0.9 on the lowest ones: a pure tone's far sidelobe bins sit ~100 dB below its peak,
    where the window's float32 rounding (~1e-7) decides the value.
    """
    return WINDOWS[opts.window_type](opts.frame_length)


def mel_scale(freq: Tensor) -> Tensor:
    """Kaldi's (and HTK's) mel scale: 1127 ln(1 + f / 700), f in Hz."""
    return 1127.0 * torch.log(1.0 + freq / 700.0)


def mel_matrix(opts: FbankOptions) -> Tensor:
    """Kaldi's mel filterbank (MelBanks) as a (K, F) float32 matrix, K = padded_window_size // 2 + 1 rfft bins.

    Filter m is a triangle in the mel domain with corners mel_low + (m, m + 1, m + 2) * delta,
    delta = (mel_high - mel_low) / (F + 1); FFT bin k (at k * sample_rate / padded Hz) gets a weight only
    strictly inside the triangle. The last row (the Nyquist bin) is zero: Kaldi's filters stop below it.
    Float32 arithmetic, like Kaldi's (MelScale is 1127.0f * logf(...)).
    """
    padded = opts.padded_window_size
    num_fft_bins = padded // 2  # Kaldi's MelBanks stop below Nyquist
    mel_low = 1127.0 * math.log(1.0 + opts.low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + opts.resolved_high_freq / 700.0)
    delta = (mel_high - mel_low) / (opts.num_mel_bins + 1)
    corners = mel_low + delta * torch.arange(opts.num_mel_bins + 2, dtype=torch.float32)  # (F + 2,)
    left, center, right = corners[:-2, None], corners[1:-1, None], corners[2:, None]  # each (F, 1)
    bin_freq = opts.sample_rate / padded * torch.arange(num_fft_bins, dtype=torch.float32)  # (K - 1,), Hz
    mel = mel_scale(bin_freq)[None]  # (1, K - 1)
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)  # (F, K - 1)
    inside = (mel > left) & (mel < right)
    weights = torch.where(inside, torch.where(mel <= center, rising, falling), 0.0)  # (F, K - 1)
    empty = (weights.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise FeatureError(
            f"mel filters {empty} cover no FFT bin: num_mel_bins={opts.num_mel_bins} is too large "
            f"for a {padded}-point FFT between {opts.low_freq:g} and {opts.resolved_high_freq:g} Hz"
        )
    return torch.cat([weights, weights.new_zeros(opts.num_mel_bins, 1)], dim=1).T.contiguous()  # (K, F)


@functools.lru_cache(maxsize=16)
def _constants(opts: FbankOptions, device: torch.device) -> tuple[Tensor, Tensor]:
    """Window (L,) and mel matrix (K, F) in float32 on `device`, for `fbank` (FrontEnd keeps its own buffers).

    A memo of pure functions of (opts, device), never mutated. Built on the CPU and copied, so every device
    gets the same bits; the dtype is always float32 because the features are always computed in float32.
    """
    return kaldi_window(opts).to(device), mel_matrix(opts).to(device)


# --- the computation ----------------------------------------------------------------------------------------


def _frames(wave: Tensor, opts: FbankOptions) -> Tensor:
    """Kaldi's frame extraction: (B, N) -> (B, T, L), a strided view when snip_edges."""
    num_samples = wave.shape[-1]
    num_frames = num_frames_for_samples(num_samples, opts)
    length, shift = opts.frame_length, opts.frame_shift
    if num_frames < 1:
        raise FeatureError(
            f"wave of {num_samples} samples is shorter than one frame "
            f"({num_samples_for_frames(1, opts)} samples needed)"
        )
    if not opts.snip_edges:
        # Frame t starts at t * shift + shift // 2 - length // 2 (Kaldi's FirstSampleOfFrame); out-of-range
        # indices reflect with the edge repeated, i.e. the wave extended symmetrically with period 2N.
        first = shift // 2 - length // 2
        index = torch.arange(first, first + (num_frames - 1) * shift + length, device=wave.device)
        index = index % (2 * num_samples)  # non-negative for negative indices too
        index = torch.where(index >= num_samples, 2 * num_samples - 1 - index, index)
        wave = wave.index_select(-1, index)  # (B, (T - 1) * shift + L)
    return wave.unfold(-1, length, shift)[:, :num_frames]  # (B, T, L)


def _log_mel(
    wave: Tensor, opts: FbankOptions, window: Tensor, mel: Tensor, dither: float, generator: torch.Generator | None
) -> Tensor:
    """(B, N) float wave in [-1, 1] -> (B, T, F) float32 log-mel, Kaldi's steps in Kaldi's order."""
    with torch.autocast(device_type=wave.device.type, enabled=False):
        frames = _frames(wave.float() * INT16_SCALE, opts)  # (B, T, L) view, int16 units
        # Every step below writes into one (B, T, L) buffer of its own (the front end's cost is these passes
        # over B * T * L floats), with Kaldi's roundings: the values are those of the step-by-step formulas.
        if dither > 0:
            noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
            frames = torch.add(frames, noise, alpha=dither, out=noise)  # one rounding: x + dither * n
        else:
            frames = frames.contiguous()  # a copy: the view shares samples between frames
        if opts.remove_dc_offset:
            frames.sub_(frames.mean(dim=-1, keepdim=True))
        if opts.preemphasis != 0:
            previous = frames[..., :-1] * opts.preemphasis  # (B, T, L - 1), before any sample changes
            frames[..., 1:].sub_(previous)  # x[i] - k x[i-1]: two roundings, as Kaldi's (not one fused a - k b)
            frames[..., :1].sub_(frames[..., :1] * opts.preemphasis)  # x[0] - k x[0]
        frames.mul_(window.float())  # (B, T, L)
        spectrum = torch.fft.rfft(frames, n=opts.padded_window_size)  # (B, T, K) complex, zero-padded
        # re^2 + im^2, as Kaldi's ComputePowerSpectrum: ~6x faster than abs().square() (no hypot, no sqrt)
        parts = torch.view_as_real(spectrum).square_()  # (B, T, K, 2), in the spectrum's own buffer
        power = torch.add(parts[..., 0], parts[..., 1])  # (B, T, K)
        return torch.matmul(power, mel.float()).clamp_min_(FLOAT_EPSILON).log_()  # (B, T, F)


def _check_wave(wave: Tensor, dims: tuple[int, ...]) -> None:
    if wave.dim() not in dims:
        raise FeatureError(f"wave must have {' or '.join(map(str, dims))} dims; got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise FeatureError(f"wave must be float in [-1, 1]; got {wave.dtype}")


def fbank(wave: Tensor, opts: FbankOptions, generator: torch.Generator | None = None) -> Tensor:
    """Kaldi log-mel filterbank of a float wave in [-1, 1] scaled to int16 units: (B, N) -> (B, T, F), (N,) -> (T, F).

    T = num_frames_for_samples(N, opts), F = opts.num_mel_bins; float32 whatever the input dtype or autocast.
    Dither (opts.dither > 0) draws from `generator` (on the wave's device), or torch's default one.
    """
    _check_wave(wave, (1, 2))
    window, mel = _constants(opts, wave.device)
    feats = _log_mel(wave.reshape(-1, wave.shape[-1]), opts, window, mel, opts.dither, generator)  # (B, T, F)
    return feats if wave.dim() == 2 else feats[0]


# --- the front end of training, inference and train_sort -----------------------------------------------------


def _band_mask(
    batch: int, size: int, num_bands: int, max_width: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(batch, size) bool: per row, `num_bands` bands of width uniform in [0, max_width], start uniform in
    [0, size - width] (Park et al. 2019); bands may overlap."""
    max_width = min(max_width, size)
    uniform = torch.rand(2, batch, num_bands, generator=generator, device=device, dtype=torch.float64)
    width = (uniform[0] * (max_width + 1)).floor().clamp_max(max_width)  # (batch, bands)
    start = (uniform[1] * (size - width + 1)).floor().clamp_max(size - width)  # (batch, bands)
    position = torch.arange(size, device=device, dtype=torch.float64)  # (size,)
    inside = (position >= start[..., None]) & (position < (start + width)[..., None])  # (batch, bands, size)
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """SpecAugment frequency and time masking (Park et al. 2019, "SpecAugment: A Simple Data Augmentation
    Method for Automatic Speech Recognition"), independent masks per utterance. No time warping (deviation:
    it is the costly part, the paper finds it the least useful policy, and speaker-verification recipes
    such as wespeaker's omit it). `prob` < 1: each utterance is masked with that probability, else left
    whole (wespeaker's `spec_aug_prob`, 0.6 there); at 1 no gate is drawn, so the masks are those drawn
    before the gate existed.

    Masked entries are set to 0: FrontEnd applies this after CMN, where 0 is the utterance's mean, so a
    mask removes information without adding an out-of-distribution value. Identity in eval mode.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10,
                 prob: float = 1.0) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise FeatureError(
                f"SpecAugment counts and widths must be >= 0; got {freq_masks}, {freq_width}, "
                f"{time_masks}, {time_width}"
            )
        if not 0.0 <= prob <= 1.0:
            raise FeatureError(f"SpecAugment probability must be in [0, 1]; got {prob}")
        self.prob = prob  # probability that an utterance is masked at all
        self.freq_masks = freq_masks  # masks per utterance
        self.freq_width = freq_width  # maximum width of one mask, mel bins
        self.time_masks = time_masks
        self.time_width = time_width  # maximum width of one mask, frames

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, "
            f"time_width={self.time_width}, prob={self.prob}"
        )

    def forward(self, feats: Tensor, generator: torch.Generator | None = None) -> Tensor:  # feats: (B, T, F)
        if not self.training:
            return feats
        batch, num_frames, num_bins = feats.shape
        freq = _band_mask(batch, num_bins, self.freq_masks, self.freq_width, generator, feats.device)  # (B, F)
        time = _band_mask(batch, num_frames, self.time_masks, self.time_width, generator, feats.device)  # (B, T)
        masked = freq[:, None, :] | time[:, :, None]  # (B, T, F)
        if self.prob < 1.0:
            gate = torch.rand(batch, generator=generator, device=feats.device, dtype=torch.float64) < self.prob
            masked = masked & gate[:, None, None]  # (B, T, F): whole utterances left unmasked
        return feats.masked_fill(masked, 0.0)  # (B, T, F)


class FrontEnd(nn.Module):
    """wave (B, N) in [-1, 1] -> features (B, T, F): Kaldi fbank, then CMN, then SpecAugment.

    Dither (Gaussian, int16 units) and SpecAugment apply only in training mode; CMN (subtract the mean over
    time of each utterance and mel bin) always when `cmn`. The window and mel matrix are non-persistent
    buffers: `.to(device)` moves them, checkpoints do not store them (they follow from `opts`).
    """

    def __init__(self, opts: FbankOptions, *, dither: float, cmn: bool, spec_augment: SpecAugment | None) -> None:
        super().__init__()
        if opts.dither != 0:
            raise FeatureError(
                "FrontEnd takes dither as its own (training-only) argument; "
                f"leave FbankOptions.dither at 0 (got {opts.dither})"
            )
        if dither < 0:
            raise FeatureError(f"dither must be >= 0; got {dither}")
        self.opts = opts
        self.dither = dither  # std of Gaussian noise in int16 sample units, training only
        self.cmn = cmn
        self.spec_augment = spec_augment
        self.register_buffer("window", kaldi_window(opts), persistent=False)  # (L,) float32
        self.register_buffer("mel", mel_matrix(opts), persistent=False)  # (K, F) float32

    def extra_repr(self) -> str:
        return f"{self.opts}, dither={self.dither}, cmn={self.cmn}"

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:  # wave: (B, N)
        _check_wave(wave, (2,))
        dither = self.dither if self.training else 0.0
        feats = _log_mel(wave, self.opts, self.window, self.mel, dither, generator)  # (B, T, F) float32
        if self.cmn:
            feats.sub_(feats.mean(dim=1, keepdim=True))  # feats is _log_mel's own buffer
        if self.spec_augment is not None and self.training:
            feats = self.spec_augment(feats, generator)
        return feats


# --- building from a config ------------------------------------------------------------------------------

def fbank_options_from_config(cfg: Config) -> FbankOptions:
    return FbankOptions(sample_rate=cfg.sample_rate, frame_length_ms=cfg.frame_length_ms,
                        frame_shift_ms=cfg.frame_shift_ms, num_mel_bins=cfg.n_mels, window_type=cfg.window_type)


def frontend_from_config(cfg: Config) -> FrontEnd:
    """The one feature path: training, evaluation and train_sort all build their front end here."""
    spec_augment = (SpecAugment(cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks, cfg.time_mask_width,
                                cfg.spec_augment_prob) if cfg.spec_augment else None)
    return FrontEnd(fbank_options_from_config(cfg), dither=cfg.dither, cmn=cfg.cmn, spec_augment=spec_augment)
