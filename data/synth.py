"""The deterministic synthetic multi-speaker demo corpus: `python -m data.synth`, or `generate_corpus(out_dir)`.

    python -m data.synth                          # corpora/demo: 180 speakers, 4800 files, 3.5 h, ~1.5 min
    python -m data.synth --out DIR --seed 1 --num-train-speakers 200 --no-noise ...   # every CorpusSpec field

No public corpus can be downloaded everywhere the project runs, so every command works on this one. It is made
by source-filter synthesis (Klatt 1980, "Software for a cascade/parallel formant synthesizer"), one voice per
speaker, one recording set-up per session:

    glottal pulses (Rosenberg 1971) at a time-varying F0, jitter, shimmer, aspiration noise
      -> cascade of 7 resonators per 10 ms frame: coarticulated F1-F4 of a phone string, F5, 2 higher poles
      -> the voice's fixed colouring: spectral tilt, piriform-fossa and nasal antiresonances
      +  frication noise through a band shape (fricatives, plosive bursts)
      -> session channel (smooth EQ and a resonance; band limits: wideband, sometimes low-passed, or telephone)
      -> session room (synthetic impulse response: RT60 0.2-0.7 s, direct-to-reverberant ratio 0-10 dB)
      +  background noise (white, pink, brown or babble-like) at 5-30 dB SNR -> level -> 16-bit PCM

Filtering is overlap-add of 20 ms Hann-windowed frames (hop 10 ms) multiplied in the frequency domain by
that frame's response (the response changes at frame rate; the windows cross-fade it), so an utterance is a
handful of batched FFTs and one FFT convolution, with no per-sample Python loop (~200x real time per core).

What a voice is (`Voice`, drawn per speaker from male / female / child-like populations): mean F0 (85-275 Hz)
and intonation range, vocal-tract length (formant scale 0.85-1.2), idiosyncratic formant and per-vowel offsets,
vowel-space size, formant bandwidths, spectral tilt, nasality, the fossa notch, sibilant place, glottal pulse
shape (open and speed quotients), breathiness, jitter, shimmer, speaking rate. What varies between
recordings of a voice: the text (a random phone string), the intonation (declination, accents, drift), the
session (F0, effort and tempo shifts, channel, room) and the recording (noise kind, SNR, level).

Difficulty, as tuned (seed 0): the naive baseline of bench/baseline_eer.py (cosine of mean log-mel vectors)
has a test EER of 26 % (val 29 %), while an LDA of the same vectors trained on the train speakers reaches 4 %:
channel, room and noise move long-term spectra as much as voices do, but in directions that training can
learn to ignore. Each nuisance alone adds 5-20 points to the baseline's EER, so each is moderate: a 2 dB EQ,
low-level hiss (white >= 20 dB SNR, pink >= 10 dB; only babble and rumble go down to 5 dB), SNRs skewed
towards 30 dB (SNR_SKEW), +-2 dB of level; the room fills the pauses and closures that would otherwise be
pure noise.

Determinism: every random draw comes from a generator seeded by (seed, split, speaker index[, utterance
number]) through np.random.SeedSequence, so the same seed gives byte-identical files whatever the number of
worker processes. The corpus is written into a temporary sibling folder, `.complete` is written last, and the
folder is renamed into place: a reader sees no corpus or a whole one.

Layout (VoxCeleb's; speaker ids id0NNNN train, id1NNNN val, id2NNNN test; trial paths are relative to the
split's wav/ folder):

    <out>/{train,val,test}/wav/<speaker>/<session>/<nnnnn>.wav   16 kHz mono 16-bit PCM
    <out>/{val,test}/trials.txt                                    `1|0 <enroll> <test>`, balanced, targets
                                                                   across sessions where the speaker has them
    <out>/meta.json                                                spec, voices, sessions, recordings
    <out>/.complete                                                written last
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import typing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter, oaconvolve

from utils import UserError, run_main

log = logging.getLogger("voiceprint")

GENERATOR_VERSION = 2  # bump when a change alters the generated audio for a given spec
SAMPLE_RATE = 16000  # Hz
HOP = 160  # samples: one control frame (10 ms); every synthesis track has one value per frame
WIN = 2 * HOP  # samples: periodic Hann window of the overlap-add filter (sums to 1 at hop WIN / 2)
NFFT = 4 * HOP  # samples: WIN plus room for WIN samples of filter tail
FREQS = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)  # (NFFT // 2 + 1,) Hz
WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)).astype(np.float32)
SPLITS = ("train", "val", "test")  # speaker ids are id<split index><4 digits>: id00000, id10000, id20000
COMPLETE = ".complete"


class SynthError(UserError, ValueError):
    """An unusable corpus spec or output folder."""


# --- the spec ---------------------------------------------------------------------------------------------

def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes, ranges and seed of a corpus; every field is a flag of `python -m data.synth`."""

    seed: int = field(default=0, metadata=_help("seed of every random draw"))
    num_train_speakers: int = field(default=120, metadata=_help("speakers of the train split"))
    num_val_speakers: int = field(default=20, metadata=_help("speakers of the val split (disjoint)"))
    num_test_speakers: int = field(default=40, metadata=_help("speakers of the test split (disjoint)"))
    train_utts_per_speaker: int = field(default=30, metadata=_help("utterances per train speaker"))
    val_utts_per_speaker: int = field(default=10, metadata=_help("utterances per val speaker"))
    test_utts_per_speaker: int = field(default=15, metadata=_help("utterances per test speaker"))
    sessions_per_speaker: tuple[int, int] = field(default=(3, 5), metadata=_help(
        "min and max recording sessions of a speaker (inclusive); each has its own channel"))
    train_duration_s: tuple[float, float] = field(default=(2.0, 3.0), metadata=_help(
        "min and max utterance duration in the train split, seconds (uniform)"))
    eval_duration_s: tuple[float, float] = field(default=(3.0, 6.0), metadata=_help(
        "min and max utterance duration in the val and test splits, seconds (uniform)"))
    num_val_trials: int = field(default=1000, metadata=_help("val trials, half of them target"))
    num_test_trials: int = field(default=5000, metadata=_help("test trials, half of them target"))
    noise: bool = field(default=True, metadata=_help("add background noise to every recording"))
    snr_db: tuple[float, float] = field(default=(5.0, 30.0), metadata=_help(
        "min and max signal-to-noise ratio of the background noise, dB (uniform per recording)"))
    channel: bool = field(default=True, metadata=_help("filter each session through its own channel"))
    reverb: bool = field(default=True, metadata=_help("record each session in its own room (reverberation)"))
    channel_depth_db: float = field(default=2.0, metadata=_help(
        "std over frequency of a session's smooth channel EQ, dB"))
    telephone_fraction: float = field(default=0.03, metadata=_help(
        "fraction of sessions recorded through a telephone band (300-3400 Hz-like)"))
    level_dbfs: tuple[float, float] = field(default=(-27.0, -23.0), metadata=_help(
        "min and max RMS level of a recording, dB re full scale (uniform per recording)"))

    def __post_init__(self) -> None:
        counts = {"num_train_speakers": self.num_train_speakers, "num_val_speakers": self.num_val_speakers,
                  "num_test_speakers": self.num_test_speakers}
        for name, value in counts.items():
            if not 1 <= value <= 10000:
                raise SynthError(f"{name} must be in [1, 10000] (ids have 4 digits per split); got {value}")
        for split in ("val", "test"):
            if getattr(self, f"num_{split}_speakers") < 2:
                raise SynthError(f"num_{split}_speakers must be at least 2 for non-target trials")
            if getattr(self, f"{split}_utts_per_speaker") < 2:
                raise SynthError(f"{split}_utts_per_speaker must be at least 2 for target trials")
            if getattr(self, f"num_{split}_trials") < 2:
                raise SynthError(f"num_{split}_trials must be at least 2")
        if self.train_utts_per_speaker < 1:
            raise SynthError(f"train_utts_per_speaker must be at least 1; got {self.train_utts_per_speaker}")
        lo, hi = self.sessions_per_speaker
        if not 1 <= lo <= hi:
            raise SynthError(f"sessions_per_speaker needs 1 <= min <= max; got {self.sessions_per_speaker}")
        for name in ("train_duration_s", "eval_duration_s"):
            lo_s, hi_s = getattr(self, name)
            if not 0.5 <= lo_s <= hi_s <= 60.0:
                raise SynthError(f"{name} needs 0.5 <= min <= max <= 60 seconds; got {(lo_s, hi_s)}")
        if not -20.0 <= self.snr_db[0] <= self.snr_db[1] <= 100.0:
            raise SynthError(f"snr_db needs -20 <= min <= max <= 100; got {self.snr_db}")
        if not -60.0 <= self.level_dbfs[0] <= self.level_dbfs[1] <= -6.0:
            raise SynthError(f"level_dbfs needs -60 <= min <= max <= -6; got {self.level_dbfs}")
        if not 0.0 <= self.channel_depth_db <= 20.0 or not 0.0 <= self.telephone_fraction <= 1.0:
            raise SynthError(f"need 0 <= channel_depth_db <= 20 and 0 <= telephone_fraction <= 1; got "
                             f"{self.channel_depth_db}, {self.telephone_fraction}")

    def num_speakers(self, split: str) -> int:
        return getattr(self, f"num_{split}_speakers")

    def utts_per_speaker(self, split: str) -> int:
        return getattr(self, f"{split}_utts_per_speaker")

    def duration_s(self, split: str) -> tuple[float, float]:
        return self.train_duration_s if split == "train" else self.eval_duration_s

    def num_trials(self, split: str) -> int:
        return 0 if split == "train" else getattr(self, f"num_{split}_trials")


def speaker_id(split: str, index: int) -> str:
    """id00000.. (train), id10000.. (val), id20000.. (test): sortable, disjoint across splits."""
    return f"id{SPLITS.index(split)}{index:04d}"


# --- phones -----------------------------------------------------------------------------------------------
# Formant targets F1-F4 (Hz) of a reference adult male vocal tract, after Peterson & Barney (1952) and
# Hillenbrand et al. (1995); a voice scales them by its tract length and its own offsets.

VOWELS: dict[str, tuple[tuple[float, float, float, float], float]] = {  # name -> (F1-F4, duration ms)
    "i": ((270, 2290, 3010, 3550), 120), "I": ((390, 1990, 2550, 3600), 85), "e": ((530, 1840, 2480, 3500), 95),
    "ae": ((660, 1720, 2410, 3450), 130), "a": ((730, 1090, 2440, 3400), 130), "o": ((570, 840, 2410, 3350), 125),
    "U": ((440, 1020, 2240, 3400), 85), "u": ((300, 870, 2240, 3350), 120), "V": ((640, 1190, 2390, 3450), 90),
    "3": ((490, 1350, 1690, 3300), 120), "@": ((500, 1500, 2500, 3500), 70),
}
VOWEL_NAMES = tuple(VOWELS)
NEUTRAL_FORMANTS = (500.0, 1500.0, 2500.0, 3500.0)
F5_HZ = 4500.0  # fifth formant of the reference tract (fixed: it shapes the spectrum above F4)
HIGHER_POLES_HZ = (5500.0, 6500.0)  # fixed poles above F5 (reference tract): the higher-pole correction
BANDWIDTHS_HZ = np.array([60.0, 80.0, 120.0, 180.0, 300.0, 500.0, 600.0])  # reference F1-F7 bandwidths, + 3 % of F


@dataclass(frozen=True)
class Phone:
    """A stretch of constant targets. Levels are dB re a stressed vowel; -inf = off."""

    duration_ms: float  # mean duration at speaking rate 1
    formants: tuple[float, float, float, float] | None = None  # F1-F4 targets; None: from the neighbours
    voice_db: float = -math.inf  # glottal pulses
    aspiration_db: float = -math.inf  # noise through the vocal tract (h, aspirated releases)
    frication_db: float = -math.inf  # noise through a band shape (fricatives, bursts)
    frication_hz: float = 0.0  # centre of the band (reference tract), Hz
    frication_oct: float = 1.0  # width of the band: std of a Gaussian in log2 frequency, octaves


SILENCE = Phone(10.0)
_FRIC = {  # fricative band (Hz, octaves) and level: s, sh, f, th
    "s": (5500.0, 0.45, 4.0), "S": (3000.0, 0.5, 8.0), "f": (4000.0, 1.5, -4.0), "T": (5000.0, 1.3, -6.0),
}
_BURST = {"p": (1200.0, 1.5), "t": (4000.0, 0.9), "k": (2200.0, 0.6)}  # release burst band (Hz, octaves)
_NASAL = {"m": (250, 1000, 2300, 3300), "n": (250, 1500, 2500, 3400), "N": (250, 2000, 2600, 3400)}
_APPROX = {"l": (360, 1300, 2700, 3500), "r": (310, 1060, 1380, 3300), "w": (290, 610, 2150, 3300),
           "j": (260, 2070, 3020, 3600)}


def _consonants() -> dict[str, tuple[Phone, ...]]:
    """Consonants as phone sequences: a plosive is closure + burst (+ aspiration when voiceless)."""
    out: dict[str, tuple[Phone, ...]] = {}
    for name, (hz, octs, level) in _FRIC.items():
        out[name] = (Phone(100.0, None, frication_db=level, frication_hz=hz, frication_oct=octs),)
    for name, voiced in (("z", "s"), ("Z", "S"), ("v", "f")):  # voiced fricatives: weaker noise plus voicing
        hz, octs, level = _FRIC[voiced]
        out[name] = (Phone(75.0, NEUTRAL_FORMANTS[:1] + (1500.0, 2500.0, 3500.0), voice_db=-10.0,
                           frication_db=level - 6.0, frication_hz=hz, frication_oct=octs),)
    out["h"] = (Phone(65.0, None, aspiration_db=-6.0),)
    for name, (voiced, (hz, octs)) in {"p": (False, _BURST["p"]), "t": (False, _BURST["t"]),
                                       "k": (False, _BURST["k"]), "b": (True, _BURST["p"]),
                                       "d": (True, _BURST["t"]), "g": (True, _BURST["k"])}.items():
        closure = Phone(55.0, (200.0, 1000.0, 2500.0, 3500.0), voice_db=-24.0) if voiced else Phone(65.0)
        burst = Phone(12.0, None, frication_db=6.0 if voiced else 12.0, frication_hz=hz, frication_oct=octs)
        aspiration = () if voiced else (Phone(40.0, None, aspiration_db=-8.0),)
        out[name] = (closure, burst, *aspiration)
    for name, formants in _NASAL.items():
        out[name] = (Phone(70.0, formants, voice_db=-9.0),)
    for name, formants in _APPROX.items():
        out[name] = (Phone(60.0, formants, voice_db=-4.0),)
    return out


CONSONANTS = _consonants()
ONSETS = ("p", "t", "k", "b", "d", "g", "m", "n", "s", "S", "f", "T", "z", "v", "h", "l", "r", "w", "j")
CLUSTERS = (("s", "t"), ("s", "k"), ("s", "p"), ("p", "r"), ("t", "r"), ("k", "l"), ("b", "l"), ("g", "r"))
CODAS = ("p", "t", "k", "d", "m", "n", "N", "s", "z", "f", "l", "r", "S")


# --- voices, sessions, recordings ----------------------------------------------------------------------

@dataclass(frozen=True)
class Voice:
    """What makes a speaker: drawn once per speaker (`draw_voice`)."""

    group: str  # "male" | "female" | "child": the population the voice was drawn from
    f0_hz: float  # mean F0 (geometric mean over voiced frames, before session and utterance shifts)
    f0_range_st: float  # intonation range, semitones (scales accents, declination, drift)
    formant_scale: float  # vocal-tract length factor on formant and frication frequencies (1 = reference male)
    formant_factors: tuple[float, ...]  # F1-F5 factors: the tract's idiosyncratic shape
    vowel_factors: tuple[tuple[float, ...], ...]  # per vowel (VOWEL_NAMES order), F1-F4 factors: an accent
    bandwidth_scale: float  # factor on formant bandwidths
    fossa_hz: float  # centre of the piriform-fossa antiresonance, a speaker-specific notch (Dang & Honda 1997)
    fossa_depth_db: float  # its depth
    fossa_width_hz: float  # its width (std of a Gaussian in frequency)
    nasal_zero_hz: float  # centre of the nasal-coupling antiresonance of voiced sounds (nasality)
    nasal_depth_db: float  # its depth (0: no nasal coupling)
    vowel_space: float  # vowel-space size: targets pulled towards (< 1) or pushed from (> 1) the neutral vowel
    sibilant_factor: float  # factor on frication centre frequencies (the place of /s/ /sh/ and bursts)
    tilt_db_per_oct: float  # spectral tilt added around 1 kHz, dB per octave
    open_quotient: float  # glottal open phase / period
    speed_quotient: float  # glottal opening / closing duration
    breathiness_db: float  # aspiration noise during voicing, dB re the pulse excitation
    jitter: float  # cycle-to-cycle F0 perturbation, fraction (std)
    shimmer: float  # cycle-to-cycle amplitude perturbation, fraction (std)
    rate: float  # factor on phone durations (> 1: slower speech)


def draw_voice(rng: np.random.Generator) -> Voice:
    group = str(rng.choice(["male", "female", "child"], p=[0.45, 0.45, 0.10]))
    if group == "male":
        f0 = np.clip(np.exp(rng.normal(np.log(115.0), 0.14)), 85.0, 170.0)
        scale = np.clip(rng.normal(0.93, 0.05), 0.85, 1.03)
        open_quotient, breathiness = rng.uniform(0.40, 0.65), rng.normal(-22.0, 4.0)
    elif group == "female":
        f0 = np.clip(np.exp(rng.normal(np.log(205.0), 0.11)), 150.0, 260.0)
        scale = np.clip(rng.normal(1.08, 0.05), 0.97, 1.18)
        open_quotient, breathiness = rng.uniform(0.55, 0.80), rng.normal(-16.0, 4.0)
    else:
        f0 = rng.uniform(225.0, 275.0)
        scale = rng.uniform(1.12, 1.20)
        open_quotient, breathiness = rng.uniform(0.50, 0.75), rng.normal(-18.0, 4.0)
    return Voice(
        group=group,
        f0_hz=float(f0),
        f0_range_st=float(rng.uniform(1.0, 3.5)),
        formant_scale=float(scale),
        formant_factors=tuple(float(x) for x in np.clip(rng.normal(1.0, [0.075, 0.075, 0.08, 0.09, 0.1]),
                                                        0.8, 1.2)),
        vowel_factors=tuple(tuple(float(x) for x in row)
                            for row in np.clip(rng.normal(1.0, 0.04, (len(VOWELS), 4)), 0.9, 1.1)),
        bandwidth_scale=float(np.clip(np.exp(rng.normal(0.0, 0.2)), 0.7, 1.5)),
        fossa_hz=float(rng.uniform(4000.0, 5000.0) * scale),
        fossa_depth_db=float(rng.uniform(6.0, 18.0)),
        fossa_width_hz=float(rng.uniform(150.0, 350.0)),
        nasal_zero_hz=float(rng.uniform(600.0, 1300.0) * scale),
        nasal_depth_db=float(rng.uniform(0.0, 18.0)),
        vowel_space=float(rng.uniform(0.75, 1.15)),
        sibilant_factor=float(rng.uniform(0.85, 1.2)),
        tilt_db_per_oct=float(np.clip(rng.normal(3.5, 3.0), -2.5, 9.5)),
        open_quotient=float(open_quotient),
        speed_quotient=float(rng.uniform(1.5, 4.0)),
        breathiness_db=float(np.clip(breathiness, -32.0, -6.0)),
        jitter=float(rng.uniform(0.003, 0.015)),
        shimmer=float(rng.uniform(0.02, 0.08)),
        rate=float(np.clip(np.exp(rng.normal(0.0, 0.12)), 0.8, 1.25)),
    )


@dataclass(frozen=True)
class Channel:
    """A session's recording chain, as a fixed magnitude response (`channel_response`)."""

    kind: str  # "wideband" | "telephone" | "flat" (channel off)
    low_cut_hz: float  # high-pass corner (0: none)
    high_cut_hz: float  # low-pass corner (>= Nyquist: none)
    eq_db: tuple[float, ...]  # cosine-series coefficients of the smooth EQ over the mel axis, dB
    peak_hz: float  # centre of one resonance (microphone / handset)
    peak_db: float  # its gain, dB
    peak_oct: float  # its width, octaves (std of a Gaussian in log2 frequency)


@dataclass(frozen=True)
class Room:
    """A session's room, as a synthetic impulse response (`room_response`): the direct sound, then an
    exponentially decaying, low-passed noise tail."""

    rt60_s: float  # reverberation time (decay by 60 dB); 0: no room (dry)
    drr_db: float  # direct-to-reverberant energy ratio
    damping: float  # one-pole low-pass coefficient of the tail in [0, 1): larger is darker
    seed: int  # seed of the tail's noise


@dataclass(frozen=True)
class Session:
    name: str  # folder name: s01, s02, ...
    f0_shift_st: float  # this day's F0 offset, semitones
    tilt_shift_db_per_oct: float  # this day's vocal effort, added to the voice's tilt
    rate_factor: float  # this day's tempo, on top of the voice's rate
    channel: Channel
    room: Room


@dataclass(frozen=True)
class Recording:
    """One utterance's plan; the audio is a pure function of (voice, session, recording, its generator)."""

    file: str  # path relative to the split's wav/ folder: <speaker>/<session>/<nnnnn>.wav
    num_samples: int
    noise: str  # "none" | a key of NOISE_KINDS
    snr_db: float
    level_dbfs: float  # RMS level of the written wave, dB re full scale


NUM_EQ_TERMS = 6
WIDEBAND_LOW_CUT_HZ = (20.0, 100.0)  # high-pass corner range of the wideband sessions
WIDEBAND_HIGH_CUT_HZ = (5500.0, 7800.0)  # low-pass corner range of the wideband sessions that have one
LOWPASS_FRACTION = 0.25  # fraction of wideband sessions with a low-pass corner below Nyquist
RT60_S = (0.2, 0.7)  # reverberation time range of the rooms, seconds
DRR_DB = (0.0, 10.0)  # direct-to-reverberant ratio range, dB
SNR_SKEW = 4.0  # 1: uniform in dB; k: median at 1 - 0.5^k of the range (k = 4: 94 %)
NOISE_KINDS = {"white": 0.2, "pink": 0.3, "brown": 0.2, "babble": 0.3}  # kind -> probability
# lowest SNR of each kind, dB: hiss is a low-level noise; crowds, traffic and rumble are the loud ones
NOISE_MIN_SNR_DB = {"white": 20.0, "pink": 10.0, "brown": 5.0, "babble": 5.0, "none": math.inf}


def draw_snr(snr_db: tuple[float, float], floor_db: float, rng: np.random.Generator) -> float:
    """An SNR in [max(min, floor_db), max] dB, skewed towards max (1 - u^SNR_SKEW of the way up, u uniform):
    most recordings are mildly noisy, a tail is very noisy."""
    lo, hi = min(max(snr_db[0], floor_db), snr_db[1]), snr_db[1]
    return float(lo + (hi - lo) * (1.0 - rng.random() ** SNR_SKEW))


def draw_channel(spec: CorpusSpec, rng: np.random.Generator) -> Channel:
    if not spec.channel:
        return Channel("flat", 0.0, float(SAMPLE_RATE), (0.0,) * NUM_EQ_TERMS, 1000.0, 0.0, 1.0)
    telephone = rng.random() < spec.telephone_fraction
    if telephone:
        kind, low, high = "telephone", rng.uniform(200.0, 350.0), rng.uniform(3300.0, 3800.0)
    else:
        kind, low = "wideband", rng.uniform(*WIDEBAND_LOW_CUT_HZ)
        high = rng.uniform(*WIDEBAND_HIGH_CUT_HZ) if rng.random() < LOWPASS_FRACTION else float(SAMPLE_RATE)
    # a cosine term a cos(pi k u) has variance a^2 / 2 over u: the curve's std over frequency is ~depth
    eq = rng.normal(0.0, spec.channel_depth_db * math.sqrt(2.0 / NUM_EQ_TERMS), NUM_EQ_TERMS)
    return Channel(kind, float(low), float(high), tuple(float(x) for x in eq), float(rng.uniform(800.0, 5000.0)),
                   float(rng.normal(0.0, spec.channel_depth_db)), float(rng.uniform(0.2, 0.6)))


def draw_room(spec: CorpusSpec, rng: np.random.Generator) -> Room:
    if not spec.reverb:
        return Room(0.0, math.inf, 0.0, 0)
    return Room(rt60_s=float(rng.uniform(*RT60_S)), drr_db=float(rng.uniform(*DRR_DB)),
                damping=float(rng.uniform(0.2, 0.7)), seed=int(rng.integers(2**31)))


def draw_sessions(spec: CorpusSpec, num_utts: int, rng: np.random.Generator) -> tuple[list[Session], list[int]]:
    """The speaker's sessions and the number of utterances in each (every session gets at least one)."""
    lo, hi = spec.sessions_per_speaker
    num_sessions = min(int(rng.integers(lo, hi + 1)), num_utts)
    counts = 1 + rng.multinomial(num_utts - num_sessions, np.full(num_sessions, 1.0 / num_sessions))
    sessions = [Session(name=f"s{i + 1:02d}", f0_shift_st=float(rng.normal(0.0, 0.6)),
                        tilt_shift_db_per_oct=float(rng.normal(0.0, 0.8)),
                        rate_factor=float(np.exp(rng.normal(0.0, 0.05))), channel=draw_channel(spec, rng),
                        room=draw_room(spec, rng))
                for i in range(num_sessions)]
    return sessions, [int(c) for c in counts]


# --- the phone string and its tracks (one value per 10 ms frame) --------------------------------------

@dataclass
class Tracks:
    """Synthesis parameters per frame (T frames); frame t is centred on sample t * HOP of the utterance."""

    formants: np.ndarray  # (T, 4) Hz, F1-F4 of this voice
    voice: np.ndarray  # (T,) linear amplitude of the glottal pulses
    aspiration: np.ndarray  # (T,) linear amplitude of noise through the tract
    frication: np.ndarray  # (T,) linear amplitude of band noise
    frication_hz: np.ndarray  # (T,) band centre
    frication_oct: np.ndarray  # (T,) band width
    intonation_st: np.ndarray  # (T,) F0 offset, semitones, mean 0 over voiced frames


def _db(level: float) -> float:
    return 0.0 if level == -math.inf else 10.0 ** (level / 20.0)


def _syllable(rng: np.random.Generator) -> tuple[list[str], str, list[str]]:
    """(onset consonants, vowel, coda consonants) of a random syllable."""
    draw = rng.random()
    onset = [] if draw < 0.25 else list(CLUSTERS[rng.integers(len(CLUSTERS))]) if draw < 0.4 else \
        [ONSETS[rng.integers(len(ONSETS))]]
    coda = [CODAS[rng.integers(len(CODAS))]] if rng.random() < 0.5 else []
    return onset, VOWEL_NAMES[rng.integers(len(VOWEL_NAMES))], coda


def phone_tracks(voice: Voice, session: Session, num_frames: int, rng: np.random.Generator) -> Tracks:
    """A random phone string (phrases of words of CV(C) syllables) laid out on `num_frames` frames."""
    rate = voice.rate * session.rate_factor
    segs: list[tuple[Phone, int, np.ndarray | None, float]] = []  # (phone, frames, F1-F4 or None, gain dB)
    accents: list[tuple[int, float]] = []  # (frame of a vowel centre, F0 bump in semitones)
    phrases: list[int] = []  # first frame of each phrase, then the end
    frames = 0

    def add(phone: Phone, factor: float, formants: np.ndarray | None = None, gain_db: float = 0.0) -> int:
        nonlocal frames
        n = max(1, round(phone.duration_ms * rate * factor * math.exp(rng.normal(0.0, 0.2)) / 10.0))
        if formants is None and phone.formants is not None:
            formants = np.array(phone.formants) * np.array(voice.formant_factors[:4])
        if formants is not None:
            formants = formants * voice.formant_scale * np.exp(rng.normal(0.0, 0.02, 4))
        segs.append((phone, n, formants, gain_db))
        frames += n
        return n

    add(SILENCE, rng.uniform(5.0, 20.0))
    while frames < num_frames:
        phrases.append(frames)
        num_words = int(rng.integers(2, 7))
        for w in range(num_words):
            num_syllables = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
            stressed = int(rng.integers(num_syllables))
            for s in range(num_syllables):
                onset, vowel, coda = _syllable(rng)
                stress = s == stressed
                final = w == num_words - 1 and s == num_syllables - 1
                for c in onset:
                    for phone in CONSONANTS[c]:
                        add(phone, 1.0)
                targets, duration_ms = VOWELS[vowel]
                factor = (1.25 if stress else 0.9) * (1.3 if final else 1.0)
                v = VOWEL_NAMES.index(vowel)
                formants = (np.array(NEUTRAL_FORMANTS) * (np.array(targets) / NEUTRAL_FORMANTS) ** voice.vowel_space
                            * np.array(voice.formant_factors[:4]) * np.array(voice.vowel_factors[v]))
                start = frames
                n = add(Phone(duration_ms, targets, voice_db=0.0), factor, formants, 2.0 if stress else -2.0)
                if stress and rng.random() < 0.5:
                    accents.append((start + n // 2, voice.f0_range_st * rng.uniform(0.8, 1.6)))
                for c in coda:
                    for phone in CONSONANTS[c]:
                        add(phone, 1.0)
            if rng.random() < 0.1:
                add(SILENCE, rng.uniform(5.0, 10.0))
        add(SILENCE, rng.uniform(10.0, 30.0))
    phrases.append(frames)
    tracks = _lay_out(segs, voice)
    tracks.intonation_st = _intonation(voice, accents, phrases, tracks.voice, rng)
    return _truncate(tracks, num_frames, trail=int(rng.integers(5, 15)))


def _lay_out(segs: list[tuple[Phone, int, np.ndarray | None, float]], voice: Voice) -> Tracks:
    """Segments -> per-frame tracks: formants coarticulated (interpolated through consonants without
    targets, then smoothed over ~25 ms), levels smoothed over ~10 ms."""
    counts = np.array([n for _, n, _, _ in segs])
    formants = np.repeat(np.array([f if f is not None else np.full(4, np.nan) for _, _, f, _ in segs]), counts, 0)
    frames = np.arange(len(formants))
    known = ~np.isnan(formants[:, 0])
    neutral = np.array(NEUTRAL_FORMANTS) * voice.formant_scale
    for k in range(4):  # four columns, not a per-sample loop
        formants[:, k] = np.interp(frames, frames[known], formants[known, k]) if known.any() else neutral[k]
    formants = gaussian_filter1d(formants, 2.5, axis=0, mode="nearest")

    def level(attr: str, sigma: float) -> np.ndarray:
        values = np.array([_db(getattr(p, attr)) * (_db(g) if p.voice_db > -math.inf else 1.0)
                           for p, _, _, g in segs])
        return gaussian_filter1d(np.repeat(values, counts), sigma, mode="nearest")

    band = np.array([(p.frication_hz, p.frication_oct) if p.frication_db > -math.inf else (np.nan, np.nan)
                     for p, _, _, _ in segs])
    band = np.repeat(band, counts, 0)
    has_band = ~np.isnan(band[:, 0])
    for k in range(2):  # bands of neighbouring fricatives fill the frames between them
        band[:, k] = np.interp(frames, frames[has_band], band[has_band, k]) if has_band.any() else 1.0
    return Tracks(
        formants=formants,
        voice=level("voice_db", 1.0),
        aspiration=level("aspiration_db", 0.8),
        frication=level("frication_db", 0.8),
        frication_hz=band[:, 0] * voice.formant_scale * voice.sibilant_factor,
        frication_oct=band[:, 1],
        intonation_st=np.zeros(len(formants)),
    )


def _intonation(voice: Voice, accents: list[tuple[int, float]], phrases: list[int], voicing: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """F0 offset in semitones: declination over each phrase + accents on stressed vowels + slow drift,
    shifted to mean 0 over voiced frames (so the voice's f0_hz is its mean F0)."""
    num_frames = len(voicing)
    contour = np.zeros(num_frames)
    for start, stop in zip(phrases[:-1], phrases[1:]):  # a handful of phrases
        fall = voice.f0_range_st * rng.uniform(0.6, 1.4)
        contour[start:stop] = np.linspace(fall / 2, -fall / 2, stop - start)
    impulses = np.zeros(num_frames)
    for frame, height in accents:
        impulses[frame] += height
    sigma = 6.0  # frames: an accent lasts ~150 ms
    contour += gaussian_filter1d(impulses, sigma, mode="constant") * sigma * math.sqrt(2 * math.pi)
    drift = gaussian_filter1d(rng.standard_normal(num_frames), 12.0, mode="nearest")
    contour += drift / max(float(drift.std()), 1e-6) * 0.35 * voice.f0_range_st
    voiced = voicing > 0.3
    return contour - (contour[voiced].mean() if voiced.any() else contour.mean())


def _truncate(tracks: Tracks, num_frames: int, trail: int) -> Tracks:
    """Cut the tracks to `num_frames`; the last `trail` frames are silence (levels fade over ~20 ms)."""
    out = Tracks(**{f.name: getattr(tracks, f.name)[:num_frames].copy() for f in dataclasses.fields(Tracks)})
    fade = np.ones(num_frames)
    fade[max(0, num_frames - trail):] = 0.0
    fade = gaussian_filter1d(fade, 1.0, mode="nearest")
    for name in ("voice", "aspiration", "frication"):
        setattr(out, name, getattr(out, name) * fade)
    return out


# --- source, filters, noise, channel -------------------------------------------------------------------

def glottal_source(voice: Voice, f0_hz: np.ndarray, tracks: Tracks, num_samples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Glottal flow derivative (Rosenberg pulses with jitter and shimmer) plus aspiration noise, (num_samples,).

    Tracks are interpolated to samples; frame t sits at sample (t + 1) * HOP of the source (one hop of lead-in
    for the first overlap-add window)."""
    samples = np.arange(num_samples)
    centres = (np.arange(len(f0_hz)) + 1) * HOP
    f0 = np.interp(samples, centres, f0_hz)
    # jitter: a random factor per glottal cycle (cycles counted on the unperturbed phase)
    cycle = np.floor(np.cumsum(f0 / SAMPLE_RATE)).astype(np.int64)
    perturb = rng.standard_normal((2, int(cycle[-1]) + 1))
    phase = np.cumsum(f0 * (1.0 + voice.jitter * perturb[0, cycle]) / SAMPLE_RATE)
    cycle = np.floor(phase).astype(np.int64)
    frac = phase - cycle
    # Rosenberg-C flow: rises over t_open, falls over t_close, then closed
    t_close = voice.open_quotient / (1.0 + voice.speed_quotient)
    t_open = voice.open_quotient - t_close
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(frac / t_open, 1.0))
    fall = np.cos(0.5 * np.pi * np.clip((frac - t_open) / t_close, 0.0, 1.0))
    flow = np.where(frac < t_open, rise, fall)
    flow *= 1.0 + voice.shimmer * np.clip(perturb[1, np.minimum(cycle, perturb.shape[1] - 1)], -3.0, 3.0)
    voicing = np.interp(samples, centres, tracks.voice)
    excitation = np.diff(flow * voicing, prepend=0.0) * (SAMPLE_RATE / voice.f0_hz)  # ~unit scale at mean F0
    breath = _db(voice.breathiness_db) * voicing * (0.25 + flow)  # pulsed with the glottal opening
    noise = (breath + np.interp(samples, centres, tracks.aspiration)) * rng.standard_normal(num_samples)
    return (excitation + noise).astype(np.float32)


def stft(signal: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames, NFFT // 2 + 1) spectra of Hann-windowed frames at hop HOP; needs (num_frames + 1) * HOP
    samples. Frame t covers samples [t * HOP, t * HOP + WIN)."""
    frames = np.lib.stride_tricks.sliding_window_view(signal, WIN)[::HOP][:num_frames]
    return np.fft.rfft(frames * WINDOW, n=NFFT, axis=-1)


def overlap_add(spectra: np.ndarray) -> np.ndarray:
    """Inverse of `stft` for frame-wise filtered spectra: sum of the NFFT-sample frame outputs at hop HOP,
    ((num_frames + 3) * HOP,) samples."""
    num_frames = len(spectra)
    frames = np.fft.irfft(spectra, n=NFFT, axis=-1).reshape(num_frames, NFFT // HOP, HOP)
    out = np.zeros((num_frames + NFFT // HOP - 1, HOP), dtype=frames.dtype)
    for k in range(NFFT // HOP):  # 4 shifted block sums
        out[k:k + num_frames] += frames[:, k]
    return out.reshape(-1)


_Z1 = np.exp(-2j * np.pi * FREQS / SAMPLE_RATE).astype(np.complex64)  # z^-1 on the FFT bins


def tract_response(formants: np.ndarray, bandwidth_scale: float) -> np.ndarray:
    """Cascade of 2-pole resonators, unity gain at DC (Klatt 1980): (T, K) Hz -> (T, NFFT // 2 + 1) complex,
    K <= len(BANDWIDTHS_HZ)."""
    bandwidths = (BANDWIDTHS_HZ[:formants.shape[-1]] + 0.03 * formants) * bandwidth_scale
    radius = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    a1 = (-2.0 * radius * np.cos(2 * np.pi * formants / SAMPLE_RATE)).astype(np.float32)
    a2 = (radius**2).astype(np.float32)
    denominator = 1.0 + a1[..., None] * _Z1 + a2[..., None] * (_Z1 * _Z1)  # (T, 5, bins)
    return np.prod((1.0 + a1 + a2)[..., None] / denominator, axis=1)


def band_shape(centre_hz: np.ndarray, width_oct: np.ndarray) -> np.ndarray:
    """Gaussian in log2 frequency: (T,), (T,) -> (T, NFFT // 2 + 1) real."""
    octaves = np.log2(np.maximum(FREQS, 50.0) / centre_hz[:, None]) / width_oct[:, None]
    return np.exp(-0.5 * octaves**2).astype(np.float32)


def voice_response(voice: Voice, session: Session) -> np.ndarray:
    """The fixed part of a voice's spectrum: tilt (a slope through 0 dB at 1 kHz, flat below 125 Hz), the
    piriform-fossa and the nasal antiresonances, (NFFT // 2 + 1,) real."""
    tilt_db = (voice.tilt_db_per_oct + session.tilt_shift_db_per_oct) * np.log2(np.maximum(FREQS, 125.0) / 1000.0)
    notch_db = -voice.fossa_depth_db * np.exp(-0.5 * ((FREQS - voice.fossa_hz) / voice.fossa_width_hz) ** 2)
    notch_db -= voice.nasal_depth_db * np.exp(-0.5 * ((FREQS - voice.nasal_zero_hz) / 150.0) ** 2)
    return (10.0 ** ((tilt_db + notch_db) / 20.0)).astype(np.float32)


def _mel_axis() -> np.ndarray:
    mel = 1127.0 * np.log1p(FREQS / 700.0)
    return mel / mel[-1]


def channel_response(channel: Channel) -> np.ndarray:
    """Magnitude response of a recording chain: (NFFT // 2 + 1,) real."""
    u = _mel_axis()
    eq_db = sum(a * np.cos(np.pi * (k + 1) * u) for k, a in enumerate(channel.eq_db))
    eq_db += channel.peak_db * np.exp(-0.5 * (np.log2(np.maximum(FREQS, 50.0) / channel.peak_hz)
                                              / channel.peak_oct) ** 2)
    gain = 10.0 ** (eq_db / 20.0)
    order = 4 if channel.kind == "telephone" else 2
    if channel.low_cut_hz > 0:
        gain /= np.sqrt(1.0 + (channel.low_cut_hz / np.maximum(FREQS, 1.0)) ** (2 * order))
    if channel.high_cut_hz < SAMPLE_RATE / 2:
        gain /= np.sqrt(1.0 + (FREQS / channel.high_cut_hz) ** (4 * order))
    return gain.astype(np.float32)


def noise_shape(kind: str, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Magnitude shape of background noise per frame, (T, NFFT // 2 + 1): a coloured noise with a slow level
    drift, or babble (a few talkers' vowel spectra switching at syllable rate, amplitude-modulated ~4 Hz)."""
    f = np.maximum(FREQS, 40.0)
    if kind == "babble":
        talkers = int(rng.integers(3, 8))
        power = np.zeros((num_frames, len(FREQS)), dtype=np.float32)
        t = np.arange(num_frames) / (SAMPLE_RATE / HOP)
        for _ in range(talkers):  # a few talkers, each a vectorised (T, bins) array
            scale = rng.uniform(0.85, 1.2)
            bank = np.stack([VOWELS[v][0] + (F5_HZ, *HIGHER_POLES_HZ) for v in VOWEL_NAMES]) * scale  # (vowels, 7)
            envelopes = np.abs(tract_response(bank, 1.5)) * (f / 500.0) ** -0.3  # (vowels, bins)
            syllable = np.floor(t * rng.uniform(3.0, 6.0) + rng.random()).astype(np.int64)
            vowel = rng.integers(len(VOWEL_NAMES), size=int(syllable[-1]) + 1)[syllable]
            envelope = np.maximum(0.0, np.sin(2 * np.pi * (t * rng.uniform(3.0, 5.0) + rng.random()))) + 0.1
            power += (envelopes[vowel] * envelope[:, None]) ** 2
        return np.sqrt(power)
    exponent = {"white": 0.0, "pink": -0.5, "brown": -1.0}[kind]
    drift = gaussian_filter1d(rng.standard_normal(num_frames), 20.0, mode="nearest")
    drift = np.exp(0.35 * drift / max(float(drift.std()), 1e-6))
    return (drift[:, None] * (f / 1000.0) ** exponent).astype(np.float32)


def synthesize(voice: Voice, session: Session, recording: Recording, rng: np.random.Generator) -> np.ndarray:
    """One utterance, float32 in [-1, 1], (recording.num_samples,)."""
    num_samples = recording.num_samples
    num_frames = -(-num_samples // HOP) + 1  # frames centred on samples 0, HOP, ... cover them all
    tracks = phone_tracks(voice, session, num_frames, rng)
    f0_st = session.f0_shift_st + rng.normal(0.0, 0.4) + tracks.intonation_st
    f0_hz = np.clip(voice.f0_hz * 2.0 ** (f0_st / 12.0), 50.0, 500.0)
    channel = channel_response(session.channel)
    wave = overlap_add(render_speech(voice, session, tracks, f0_hz, rng) * channel)
    if session.room.rt60_s > 0:
        wave = oaconvolve(wave, room_response(session.room))[:len(wave)]
    wave = wave[HOP:HOP + num_samples]
    if recording.noise != "none":
        noise = overlap_add(background_noise(recording.noise, num_frames, rng) * channel)[HOP:HOP + num_samples]
        wave += noise * math.sqrt(_power(wave) / max(_power(noise), 1e-20) / 10.0 ** (recording.snr_db / 10.0))
    wave *= 10.0 ** (recording.level_dbfs / 20.0) / math.sqrt(max(_power(wave), 1e-24))
    peak = float(np.abs(wave).max())
    return (wave * min(1.0, 0.95 / peak) if peak > 0 else wave).astype(np.float32)


def _power(wave: np.ndarray) -> float:
    return float(np.mean(np.square(wave, dtype=np.float64)))


def render_speech(voice: Voice, session: Session, tracks: Tracks, f0_hz: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Frame spectra (T, NFFT // 2 + 1) of the dry speech: the glottal source through the tract, plus frication;
    `overlap_add` makes the wave (frame t centred on its sample (t + 1) * HOP)."""
    num_frames = len(f0_hz)
    source = glottal_source(voice, f0_hz, tracks, (num_frames + 1) * HOP, rng)
    fric_noise = rng.standard_normal((num_frames + 1) * HOP, dtype=np.float32)
    fixed = np.array([F5_HZ, *HIGHER_POLES_HZ]) * voice.formant_scale * np.array([voice.formant_factors[4], 1, 1])
    formants = np.concatenate([tracks.formants, np.broadcast_to(fixed, (num_frames, len(fixed)))], axis=1)
    tract = tract_response(formants, voice.bandwidth_scale) * voice_response(voice, session)
    speech = stft(source, num_frames) * tract
    speech += stft(fric_noise, num_frames) * (band_shape(tracks.frication_hz, tracks.frication_oct)
                                              * tracks.frication[:, None].astype(np.float32))
    return speech


def background_noise(kind: str, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frame spectra (T, NFFT // 2 + 1) of background noise of `kind`, unscaled."""
    white = rng.standard_normal((num_frames + 1) * HOP, dtype=np.float32)
    return stft(white, num_frames) * noise_shape(kind, num_frames, rng)


def room_response(room: Room) -> np.ndarray:
    """Impulse response of a room: 1 (the direct sound), then after 1-4 ms a low-passed noise tail decaying by
    60 dB over rt60_s, with energy 10^(-drr_db / 10); (rt60_s * SAMPLE_RATE,) float32."""
    rng = np.random.default_rng(room.seed)
    length = max(2, int(room.rt60_s * SAMPLE_RATE))
    delay = int(rng.integers(16, 64))
    t = np.arange(length - delay) / SAMPLE_RATE
    tail = lfilter([1.0 - room.damping], [1.0, -room.damping], rng.standard_normal(length - delay))
    tail *= np.exp(-3.0 * math.log(10.0) * t / room.rt60_s)  # amplitude -60 dB at rt60
    response = np.zeros(length)
    response[0] = 1.0
    response[delay:] = tail * math.sqrt(10.0 ** (-room.drr_db / 10.0) / max(float(np.sum(tail**2)), 1e-20))
    return response.astype(np.float32)


# --- a speaker (one unit of work) ---------------------------------------------------------------------------

def speaker_plan(spec: CorpusSpec, split: str, index: int) -> tuple[Voice, list[Session], list[list[Recording]]]:
    """A speaker's voice, sessions and recordings, from the generator of (seed, split, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS.index(split), index]))
    voice = draw_voice(rng)
    sessions, counts = draw_sessions(spec, spec.utts_per_speaker(split), rng)
    lo_s, hi_s = spec.duration_s(split)
    kinds, weights = list(NOISE_KINDS), np.array(list(NOISE_KINDS.values()))
    recordings = []
    for session, count in zip(sessions, counts):
        session_recordings = []
        for u in range(count):
            num_samples = int(round(rng.uniform(lo_s, hi_s) * SAMPLE_RATE))
            kind = str(rng.choice(kinds, p=weights)) if spec.noise else "none"
            session_recordings.append(Recording(
                file=f"{speaker_id(split, index)}/{session.name}/{u + 1:05d}.wav",
                num_samples=num_samples,
                noise=kind,
                snr_db=draw_snr(spec.snr_db, NOISE_MIN_SNR_DB[kind], rng) if spec.noise else math.inf,
                level_dbfs=float(rng.uniform(*spec.level_dbfs)),
            ))
        recordings.append(session_recordings)
    return voice, sessions, recordings


def generate_speaker(spec: CorpusSpec, split: str, index: int, wav_dir: Path) -> dict:
    """Write one speaker's files under `wav_dir`; return its meta.json entry."""
    voice, sessions, recordings = speaker_plan(spec, split, index)
    number = 0
    for session, session_recordings in zip(sessions, recordings):
        for recording in session_recordings:
            number += 1
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS.index(split), index, number]))
            wave = synthesize(voice, session, recording, rng)
            path = wav_dir / recording.file
            path.parent.mkdir(parents=True, exist_ok=True)
            pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)
            sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return {
        "id": speaker_id(split, index),
        "voice": _rounded(dataclasses.asdict(voice)),
        "sessions": [_rounded({**dataclasses.asdict(s), "recordings": [dataclasses.asdict(r) for r in rs]})
                     for s, rs in zip(sessions, recordings)],
    }


def _rounded(value: object) -> object:
    """Floats to 5 significant digits (meta.json is for reading); inf (no noise) as null."""
    if isinstance(value, float):
        return None if math.isinf(value) else float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _generate_speaker_task(task: tuple[CorpusSpec, str, int, Path]) -> dict:
    return generate_speaker(*task)


# --- trials -----------------------------------------------------------------------------------------------

def make_trials(utterances: list[tuple[str, str, str]], num_trials: int,
                rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """Balanced trials (label, enroll, test) from (speaker, session, file) triples, in random order.

    Targets are spread evenly over speakers and are cross-session pairs while a speaker has them, then
    same-session pairs; non-targets are distinct random pairs of different speakers. No pair repeats."""
    by_speaker: dict[str, list[tuple[str, str]]] = {}
    for speaker, session, file in utterances:
        by_speaker.setdefault(speaker, []).append((session, file))
    speakers = sorted(by_speaker)
    num_target = num_trials // 2
    quota = np.full(len(speakers), num_target // len(speakers))
    quota[rng.permutation(len(speakers))[:num_target % len(speakers)]] += 1
    trials: list[tuple[int, str, str]] = []
    for speaker, want in zip(speakers, quota):
        utts = by_speaker[speaker]
        pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]]
        cross = [p for p in pairs if p[0][0] != p[1][0]]
        same = [p for p in pairs if p[0][0] == p[1][0]]
        if want > len(pairs):
            raise SynthError(f"{num_trials} trials need {want} target pairs of {speaker}, who has {len(pairs)}: "
                             f"use fewer trials or more utterances per speaker")
        chosen = [cross[i] for i in rng.permutation(len(cross))[:want]]
        chosen += [same[i] for i in rng.permutation(len(same))[:want - len(chosen)]]
        trials += [(1, a[1], b[1]) if rng.random() < 0.5 else (1, b[1], a[1]) for a, b in chosen]
    files = [file for _, _, file in utterances]
    owner = np.array([speakers.index(speaker) for speaker, _, _ in utterances])
    possible = (len(files) ** 2 - sum(len(u) ** 2 for u in by_speaker.values()))  # ordered different-speaker pairs
    num_nontarget = num_trials - num_target
    if num_nontarget > possible // 2:
        raise SynthError(f"{num_trials} trials need {num_nontarget} non-target pairs; only {possible // 2} exist")
    seen: set[tuple[int, int]] = set()
    while len(seen) < num_nontarget:  # rejection sampling in vectorised batches
        a, b = rng.integers(len(files), size=(2, 2 * (num_nontarget - len(seen))))
        for i, j in zip(a.tolist(), b.tolist()):
            if owner[i] != owner[j] and (i, j) not in seen and (j, i) not in seen and len(seen) < num_nontarget:
                seen.add((i, j))
    trials += [(0, files[i], files[j]) for i, j in sorted(seen)]
    return [trials[i] for i in rng.permutation(len(trials))]


def write_trials(path: Path, trials: list[tuple[int, str, str]]) -> None:
    path.write_text("".join(f"{label} {a} {b}\n" for label, a, b in trials))


# --- the corpus ---------------------------------------------------------------------------------------------

def _looks_like_corpus(path: Path) -> bool:
    """Only folders this module writes are replaced: empty, or holding nothing but its own entries."""
    return path.is_dir() and {p.name for p in path.iterdir()} <= {*SPLITS, "meta.json", COMPLETE}


def corpus_version(path: Path) -> int | None:
    """The version of this generator recorded in a complete corpus's `.complete` ("data.synth version N"); None
    when there is no complete corpus, or one made by another generator (data/synth_harmonic.py's tag names it)."""
    try:
        name, _, version = (Path(path) / COMPLETE).read_text().split()
        return int(version) if name == "data.synth" else None
    except (OSError, ValueError):
        return None


def ensure_demo_corpus(root: Path) -> None:
    """Generate the corpus of the default spec in `root` when it is absent, incomplete, or was made by another
    version of this generator (its audio, and every number measured on it, would differ)."""
    root = Path(root)
    version = corpus_version(root)
    if version == GENERATOR_VERSION:
        return
    other = (root / COMPLETE).is_file()  # a complete corpus of another version, or of another generator
    if not other:
        log.info("generating the demo corpus in %s (first use)", root)
    else:
        log.info("%s was made by %s; regenerating it with data.synth version %d", root,
                 (root / COMPLETE).read_text().strip(), GENERATOR_VERSION)
    generate_corpus(root, overwrite=other)


def generate_corpus(out_dir: Path, spec: CorpusSpec = CorpusSpec(), *, workers: int = 2,
                    overwrite: bool = False) -> None:
    """Generate the corpus of `spec` into `out_dir`, atomically (see the module docstring for the layout).

    `workers` processes synthesise speakers in parallel (1: in this process); the files do not depend on it.
    An existing complete corpus is an error unless `overwrite`; an incomplete one (a crashed run) is replaced.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not _looks_like_corpus(out_dir):
        raise SynthError(f"{out_dir}: exists and is not a corpus made by data.synth; not touching it")
    if (out_dir / COMPLETE).is_file() and not overwrite:
        raise SynthError(f"{out_dir}: a complete corpus is already there (pass --force / overwrite=True to "
                         f"regenerate it)")
    if workers < 1:
        raise SynthError(f"workers must be at least 1; got {workers}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the corpus gets the permissions mkdir would give
    try:
        meta = _generate_into(tmp, spec, workers)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / COMPLETE).write_text(f"data.synth version {GENERATOR_VERSION}\n")
        _publish(tmp, out_dir, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _generate_into(root: Path, spec: CorpusSpec, workers: int) -> dict:
    tasks = [(spec, split, i, root / split / "wav") for split in SPLITS for i in range(spec.num_speakers(split))]
    start = time.monotonic()
    log.info("synthesising %d speakers with %d worker%s into %s", len(tasks), workers, "s"[:workers > 1], root)
    entries: list[dict] = []
    if workers == 1:
        for entry in map(_generate_speaker_task, tasks):
            entries.append(entry)
            _progress(len(entries), len(tasks), start)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for entry in pool.map(_generate_speaker_task, tasks):
                entries.append(entry)
                _progress(len(entries), len(tasks), start)
    meta: dict = {"generator": "voiceprint data.synth", "version": GENERATOR_VERSION, "sample_rate": SAMPLE_RATE,
                  "spec": dataclasses.asdict(spec), "splits": {}}
    for split_index, split in enumerate(SPLITS):
        split_entries = [e for e in entries if e["id"].startswith(f"id{split_index}")]
        meta["splits"][split] = {"speakers": split_entries}
        if spec.num_trials(split):
            utterances = [(e["id"], s["name"], r["file"]) for e in split_entries for s in e["sessions"]
                          for r in s["recordings"]]
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, split_index, 10**6]))
            write_trials(root / split / "trials.txt", make_trials(utterances, spec.num_trials(split), rng))
    seconds = sum(r["num_samples"] for e in entries for s in e["sessions"] for r in s["recordings"]) / SAMPLE_RATE
    log.info("synthesised %.0f s of audio (%.2f h) in %.0f s", seconds, seconds / 3600, time.monotonic() - start)
    return meta


def _progress(count: int, total: int, start: float) -> None:
    if count % max(1, total // 10) == 0 or count == total:
        log.info("%d/%d speakers in %.0f s", count, total, time.monotonic() - start)


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished corpus into place, replacing a stale one, or a complete one when asked to."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    complete = (out_dir / COMPLETE).is_file()
    if complete and not overwrite:  # another process finished the same folder meanwhile
        if (out_dir / "meta.json").read_bytes() == (tmp / "meta.json").read_bytes():
            log.info("%s: an identical corpus appeared meanwhile (another process); keeping it", out_dir)
            return
        raise SynthError(f"{out_dir}: another corpus appeared there meanwhile; not replacing it")
    if not _looks_like_corpus(out_dir):
        raise SynthError(f"{out_dir}: exists and is not a corpus made by data.synth; not touching it")
    log.info("%s: replacing the %s corpus there", out_dir, "complete" if complete else "incomplete")
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.replace(out_dir, old / "corpus")
    os.replace(tmp, out_dir)
    shutil.rmtree(old)


# --- command line -------------------------------------------------------------------------------------------

def _spec_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per CorpusSpec field: --num-train-speakers, --snr-db MIN MAX, --noise / --no-noise."""
    hints = typing.get_type_hints(CorpusSpec)
    for f in dataclasses.fields(CorpusSpec):
        flag, hint, text = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata["help"]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        elif typing.get_origin(hint) is tuple:
            element = typing.get_args(hint)[0]
            parser.add_argument(flag, type=element, nargs=2, default=f.default, metavar=("MIN", "MAX"),
                                help=text)
        else:
            parser.add_argument(flag, type=hint, default=f.default, help=text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.synth", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("corpora/demo"), help="corpus folder to create")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (the files do not depend on it)")
    parser.add_argument("--force", action="store_true", help="replace a complete corpus already in --out")
    _spec_flags(parser)
    args = parser.parse_args(argv)
    spec = CorpusSpec(**{f.name: (tuple(getattr(args, f.name)) if isinstance(f.default, tuple)
                                  else getattr(args, f.name)) for f in dataclasses.fields(CorpusSpec)})
    generate_corpus(args.out, spec, workers=args.workers, overwrite=args.force)
    log.info("corpus ready: %s", args.out)


if __name__ == "__main__":
    run_main(main)
