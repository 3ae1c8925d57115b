"""A second, independent synthetic corpus: harmonic-plus-noise voices, `python -m data.synth_harmonic`.

    python -m data.synth_harmonic                       # corpora/harmonic: 220 speakers, 3,880 files, ~4.4 h
    python -m data.synth_harmonic --out DIR --seed 1 --num-train-speakers 200 --no-noise ...  # every spec field

The demo corpus (data/synth.py) is what the project was developed and tuned on; recipe choices that only work
there would go unnoticed. This corpus shares nothing with it but the layout: another voice model, another
synthesis method, another text and prosody model and another channel model.

Synthesis is sinusoidal and harmonic-plus-noise (McAulay & Quatieri 1986, "Speech analysis/synthesis based on
a sinusoidal representation"; Stylianou 2001, "Applying the harmonic plus noise model in concatenative speech
synthesis"), per 10 ms frame:

    harmonic part: harmonics k*F0 up to the maximum voiced frequency (MVF), amplitudes sampling the frame's
      spectral envelope; phases integrate the instantaneous frequency sample by sample (no discontinuity)
    noise part: random-phase spectra shaped by the envelope (-6 dB above the MVF, -HNR below it), modulated
      by the glottal cycle; frication and bursts shaped by their own envelopes; sine-windowed overlap-add

A spectral envelope is a mel-cepstrum (order 24, all-pass warp 0.42: Tokuda et al. 1994, "Mel-generalized
cepstral analysis"). The language's 24 phone classes each have one; a voice adds its own cepstral offset (its
timbre), small per-class offsets (its accent), a spectral tilt, and a vocal-tract-length factor applied as a
bilinear frequency warp composed with the mel warp (VTLN: Pitz & Ney 2005, "Vocal tract normalization equals
linear transformation in cepstral space"). A voice also has its F0 mean, accent range, declination habit,
vibrato, jitter and shimmer, harmonic-to-noise ratio (breathiness), MVF and speaking rhythm (syllable rate,
pausing). Text is a random string of CV(C) syllables grouped into words and phrases.

Channel, one per session (recording set-up), then the recording:

    room: exponentially decaying noise burst (Moorer 1979, "About this reverberation business") in two bands,
      each with its own RT60 (highs 1.5-2.5x faster), 3-8 discrete early reflections, direct-to-reverberant
      ratio 3-15 dB
    + environment noise of the session's kind: mains hum with harmonics, fan/HVAC coloured noise with blade
      tones, clicks, distant music; a fresh instance and SNR per recording
    -> microphone: minimum-phase FIR (homomorphic design, Oppenheim & Schafer ch. 13) of a measured-mic-like
      response: bass roll-off, 2-4 resonances/dips, treble roll-off
    -> level -> codec: wideband PCM, AGC with soft clipping, 8-bit mu-law (ITU-T G.711), or narrowband
      (8 kHz, mu-law, back to 16 kHz) -> 16-bit PCM

Everything is vectorised numpy: the harmonic part is (40 frames, 160 samples, harmonics) blocks of cosines
reduced by batched matrix products, the noise part batched inverse FFTs, the room and the microphone FFT
convolutions (~80x real time per core: the default corpus, 4.4 h, is 192 s of CPU).

Difficulty, as tuned (seed 0): the naive baseline of bench/baseline_eer.py (cosine of mean log-mel vectors)
has a test EER of 30.3 % (val 32.0 %; demo corpus: 26 %). On a 30-speaker list of 3-4 s recordings, rooms
alone give it 17 %; the environment noise and the microphone + codec move long-term spectra about as much as
the voices do, in directions a trained network can learn to ignore.

Determinism, layout and publication are data/synth.py's (its trial maker, speaker ids and atomic publication
are reused): every draw comes from np.random.SeedSequence((seed, split, speaker[, utterance])), so files are
byte-identical whatever the number of workers; `<out>/{train,val,test}/wav/<speaker>/<session>/<nnnnn>.wav`,
`{val,test}/trials.txt` (balanced, targets across sessions), meta.json, `.complete` written last, renamed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from scipy.fft import next_fast_len
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter, oaconvolve, resample_poly

from data.synth import (
    COMPLETE,
    SPLITS,
    SynthError,
    _looks_like_corpus,
    _progress,
    _publish,
    _rounded,
    make_trials,
    speaker_id,
    write_trials,
)
from data.synth import ensure_demo_corpus as ensure_formant_corpus
from utils import run_main

log = logging.getLogger("voiceprint")

VERSION = 1  # bump when a change alters the generated audio for a given spec
TAG = f"data.synth_harmonic version {VERSION}"  # the whole text of `.complete`
SAMPLE_RATE = 16000  # Hz
HOP = 160  # samples per 10 ms frame
FRAME = 2 * HOP  # samples: sine-windowed noise frames, 50 % overlap (sin^2 + cos^2 = 1: constant variance)
BINS = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE)  # (161,) Hz, the noise part's frequency grid
SINE = np.sin(np.pi * (np.arange(FRAME) + 0.5) / FRAME).astype(np.float32)  # (FRAME,)
ORDER = 24  # mel-cepstral order of every envelope
MEL_ALPHA = 0.42  # all-pass constant approximating the mel scale at 16 kHz (Tokuda et al. 1994)
TOP_HZ = 7600.0  # no harmonic above this (below Nyquist, above every MVF)


# --- the spec ---------------------------------------------------------------------------------------------

def _doc(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class HarmonicSpec:
    """Sizes, ranges and seed of a harmonic corpus; every field is a flag of `python -m data.synth_harmonic`."""

    seed: int = field(default=0, metadata=_doc("seed of every random draw"))
    num_train_speakers: int = field(default=160, metadata=_doc("speakers of the train split"))
    num_val_speakers: int = field(default=20, metadata=_doc("speakers of the val split (disjoint)"))
    num_test_speakers: int = field(default=40, metadata=_doc("speakers of the test split (disjoint)"))
    train_utts_per_speaker: int = field(default=20, metadata=_doc("utterances per train speaker"))
    val_utts_per_speaker: int = field(default=10, metadata=_doc("utterances per val speaker"))
    test_utts_per_speaker: int = field(default=12, metadata=_doc("utterances per test speaker"))
    sessions_per_speaker: int = field(default=4, metadata=_doc(
        "recording sessions of every speaker (each its own microphone, codec, room and noise kind)"))
    train_duration_s: tuple[float, float] = field(default=(2.0, 6.0), metadata=_doc(
        "min and max train utterance duration, seconds (uniform)"))
    eval_duration_s: tuple[float, float] = field(default=(3.0, 6.0), metadata=_doc(
        "min and max val and test utterance duration, seconds (uniform)"))
    num_val_trials: int = field(default=1000, metadata=_doc("val trials, half of them target"))
    num_test_trials: int = field(default=4000, metadata=_doc("test trials, half of them target"))
    noise: bool = field(default=True, metadata=_doc("add the session's environment noise to every recording"))
    snr_db: tuple[float, float] = field(default=(5.0, 30.0), metadata=_doc(
        "min and max environment-noise SNR, dB (per recording; skewed towards the max)"))
    channel: bool = field(default=True, metadata=_doc("pass each session through its own microphone and codec"))
    reverb: bool = field(default=True, metadata=_doc("record each session in its own room"))
    mic_depth_db: float = field(default=3.0, metadata=_doc(
        "std of the gain of a microphone's resonances and dips, dB"))
    narrowband_fraction: float = field(default=0.05, metadata=_doc(
        "fraction of sessions through an 8 kHz mu-law codec (0-4 kHz band)"))
    level_dbfs: tuple[float, float] = field(default=(-30.0, -20.0), metadata=_doc(
        "min and max RMS level of a recording, dB re full scale (uniform per recording)"))

    def __post_init__(self) -> None:
        bounds = {  # field -> (lowest, highest) allowed value
            "num_train_speakers": (1, 10000), "num_val_speakers": (2, 10000), "num_test_speakers": (2, 10000),
            "train_utts_per_speaker": (1, 10**5), "val_utts_per_speaker": (2, 10**5),
            "test_utts_per_speaker": (2, 10**5), "sessions_per_speaker": (1, 100), "num_val_trials": (2, 10**8),
            "num_test_trials": (2, 10**8), "mic_depth_db": (0.0, 20.0), "narrowband_fraction": (0.0, 1.0)}
        for name, (lowest, highest) in bounds.items():
            if not lowest <= getattr(self, name) <= highest:
                raise SynthError(f"{name} must be in [{lowest}, {highest}]; got {getattr(self, name)}")
        ranges = {"train_duration_s": (0.5, 60.0), "eval_duration_s": (0.5, 60.0), "snr_db": (-20.0, 100.0),
                  "level_dbfs": (-60.0, -6.0)}
        for name, (lowest, highest) in ranges.items():
            lo, hi = getattr(self, name)
            if not lowest <= lo <= hi <= highest:
                raise SynthError(f"{name} needs {lowest} <= min <= max <= {highest}; got {(lo, hi)}")

    def num_speakers(self, split: str) -> int:
        return getattr(self, f"num_{split}_speakers")

    def utts_per_speaker(self, split: str) -> int:
        return getattr(self, f"{split}_utts_per_speaker")

    def duration_s(self, split: str) -> tuple[float, float]:
        return self.train_duration_s if split == "train" else self.eval_duration_s

    def num_trials(self, split: str) -> int:
        return 0 if split == "train" else getattr(self, f"num_{split}_trials")


# --- the language: phone classes and their envelopes --------------------------------------------------------
# kind -> (count, mean duration ms, harmonic level dB, noise level dB); the classes of a kind are numbered.

KINDS: dict[str, tuple[int, float, float, float]] = {
    "vowel": (10, 110.0, 0.0, -math.inf), "nasal": (3, 70.0, -9.0, -math.inf),
    "liquid": (3, 60.0, -5.0, -math.inf), "fricative": (4, 100.0, -math.inf, -12.0),
    "voiced_fricative": (2, 75.0, -14.0, -16.0), "stop": (2, 75.0, -math.inf, -14.0)}
CLASSES = tuple(f"{kind}{i}" for kind, (count, *_) in KINDS.items() for i in range(count))  # 24 names
SILENT = len(CLASSES)  # class index of silence (pauses, stop closures)
ONSETS = [c for c in CLASSES if not c.startswith("vowel")]
VOWELS = [c for c in CLASSES if c.startswith("vowel")]
LANGUAGE_SEED = 20260514  # the phone inventory belongs to the generator, not to a corpus seed


@functools.cache
def language_cepstra() -> np.ndarray:
    """(len(CLASSES) + 1, ORDER + 1) mel-cepstra of the phone classes and of silence, in nepers.

    c1..c24 are random with variance falling as 1/m (smooth envelopes with a few peaks); vowels get a falling
    low-pass shape (c1 > 0), fricatives a rising one (c1 < 0, energy at 2-7 kHz), nasals a low murmur."""
    rng = np.random.default_rng(LANGUAGE_SEED)
    m = np.arange(1, ORDER + 1)
    ceps = np.zeros((len(CLASSES) + 1, ORDER + 1))
    ceps[:-1, 1:] = rng.standard_normal((len(CLASSES), ORDER)) * 0.55 / np.sqrt(m)
    shape = {"vowel": 0.9, "nasal": 1.4, "liquid": 1.0, "fricative": -0.9, "voiced_fricative": -0.5, "stop": -0.4}
    for i, name in enumerate(CLASSES):
        ceps[i, 1] += shape[name.rstrip("0123456789")]
    return ceps


def warp_basis(hz: np.ndarray, alpha: float) -> np.ndarray:
    """(..., ORDER + 1) basis turning a mel-cepstrum into log amplitude (nepers) at frequencies `hz` (...):
    log|H| = c0 + 2 sum_m c_m cos(m w~), w~ the frequency through the all-pass warp of constant `alpha`."""
    w = (2.0 * np.pi / SAMPLE_RATE) * np.asarray(hz, dtype=np.float32)
    warped = w + 2.0 * np.arctan(alpha * np.sin(w) / (1.0 - alpha * np.cos(w)))
    basis = 2.0 * np.cos(warped[..., None] * np.arange(ORDER + 1, dtype=np.float32))
    basis[..., 0] = 1.0
    return basis


def compose_warps(vtl_alpha: float) -> float:
    """All-pass warps compose: the mel warp after the vocal-tract warp is one warp of this constant."""
    return (MEL_ALPHA + vtl_alpha) / (1.0 + MEL_ALPHA * vtl_alpha)


# --- voices, sessions, recordings ----------------------------------------------------------------------------

GROUPS = {  # group -> (probability, F0 mean range Hz, vocal-tract warp range; > 0 = longer tract, lower peaks)
    "male": (0.45, (85.0, 150.0), (0.02, 0.10)), "female": (0.45, (160.0, 260.0), (-0.06, 0.03)),
    "child": (0.10, (230.0, 320.0), (-0.12, -0.04))}


@dataclass(frozen=True)
class Voice:
    group: str
    f0_hz: float  # mean F0
    accent_st: float  # height of a pitch accent, semitones
    declination_st_s: float  # F0 fall within a phrase, semitones per second
    vibrato_hz: float  # rate of the slow F0 tremor
    vibrato_cents: float  # its depth
    jitter_cents: float  # std of frame-to-frame F0 perturbation
    shimmer_db: float  # std of frame-to-frame harmonic level perturbation
    vtl_alpha: float  # vocal-tract-length warp constant
    tilt_db_oct: float  # spectral tilt added to every envelope, dB per octave re 1 kHz
    hnr_db: float  # harmonic-to-noise ratio below the MVF (low = breathy)
    mvf_hz: float  # maximum voiced frequency
    syllables_s: float  # speaking rate, syllables per second
    pause_prob: float  # probability of a pause between words
    vowel_stretch: float  # vowel durations relative to the language's
    timbre: tuple[float, ...]  # mel-cepstral offset c1..c24 added to every class, nepers


def draw_voice(rng: np.random.Generator) -> Voice:
    groups = list(GROUPS)
    group = groups[int(rng.choice(len(groups), p=[GROUPS[g][0] for g in groups]))]
    _, f0_range, warp_range = GROUPS[group]
    m = np.arange(1, ORDER + 1)
    return Voice(
        group=group, f0_hz=float(rng.uniform(*f0_range)), accent_st=float(rng.uniform(1.0, 5.0)),
        declination_st_s=float(rng.uniform(0.0, 3.0)), vibrato_hz=float(rng.uniform(3.5, 7.0)),
        vibrato_cents=float(rng.uniform(0.0, 30.0)), jitter_cents=float(rng.uniform(5.0, 40.0)),
        shimmer_db=float(rng.uniform(0.2, 1.5)), vtl_alpha=float(rng.uniform(*warp_range)),
        tilt_db_oct=float(rng.uniform(-5.0, 1.5)), hnr_db=float(rng.uniform(8.0, 30.0)),
        mvf_hz=float(rng.uniform(2500.0, 6000.0)), syllables_s=float(rng.uniform(3.5, 6.5)),
        pause_prob=float(rng.uniform(0.05, 0.35)), vowel_stretch=float(rng.uniform(0.75, 1.35)),
        timbre=tuple(float(x) for x in rng.standard_normal(ORDER) * 0.5 / np.sqrt(m)))


CODECS = {"wideband": 0.6, "agc": 0.2, "mulaw": 0.2}  # session codec -> probability (narrowband: the spec's)
NOISE_KINDS = {"hum": 0.25, "hvac": 0.35, "clicks": 0.15, "music": 0.25}  # session environment -> probability
MIN_SNR_DB = {"hum": 25.0, "clicks": 15.0, "hvac": 10.0, "music": 12.0}  # a kind's SNR never goes below this
SNR_SKEW = 3.0  # SNR = max - (max - min) * u^SKEW, u uniform: median at 1 - 0.5^SKEW (88 %) of the range


@dataclass(frozen=True)
class Session:
    name: str
    f0_shift_st: float  # the day's F0 offset, semitones
    effort_db_oct: float  # the day's tilt change (vocal effort), dB per octave
    tempo: float  # the day's speaking-rate factor
    mic_seed: int  # seeds the microphone response
    codec: str  # a CODECS key or "narrowband"
    room_seed: int  # seeds the room's impulse response
    rt60_s: float  # low-band reverberation time (the high band decays 1.5-2.5x faster)
    drr_db: float  # direct-to-reverberant ratio
    noise: str  # a NOISE_KINDS key, or "none"


@dataclass(frozen=True)
class Recording:
    file: str  # relative to the split's wav/ folder
    num_samples: int
    snr_db: float  # inf: no noise
    level_dbfs: float


def draw_session(spec: HarmonicSpec, number: int, rng: np.random.Generator) -> Session:
    codecs = list(CODECS)
    codec = codecs[int(rng.choice(len(codecs), p=list(CODECS.values())))]
    if rng.random() < spec.narrowband_fraction:
        codec = "narrowband"
    kinds = list(NOISE_KINDS)
    return Session(
        name=f"s{number:02d}", f0_shift_st=float(rng.normal(0.0, 0.7)), effort_db_oct=float(rng.normal(0.0, 0.3)),
        tempo=float(rng.uniform(0.9, 1.1)), mic_seed=int(rng.integers(2**31)),
        codec=codec if spec.channel else "wideband", room_seed=int(rng.integers(2**31)),
        rt60_s=float(rng.uniform(0.15, 0.6)), drr_db=float(rng.uniform(3.0, 15.0)),
        noise=kinds[int(rng.choice(len(kinds), p=list(NOISE_KINDS.values())))] if spec.noise else "none")


def speaker_plan(spec: HarmonicSpec, split: str,
                 index: int) -> tuple[Voice, np.ndarray, list[Session], list[list[Recording]]]:
    """A speaker's voice, its class cepstra (len(CLASSES) + 1, ORDER + 1), sessions and recordings."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS.index(split), index]))
    voice = draw_voice(rng)
    accent = rng.standard_normal((len(CLASSES) + 1, ORDER)) * 0.06 / np.sqrt(np.arange(1, ORDER + 1))
    ceps = language_cepstra().copy()
    ceps[:, 1:] += np.asarray(voice.timbre) + accent
    sessions = [draw_session(spec, s + 1, rng) for s in range(spec.sessions_per_speaker)]
    counts = np.bincount(np.arange(spec.utts_per_speaker(split)) % len(sessions), minlength=len(sessions))
    recordings, number = [], 0
    for session, count in zip(sessions, counts):
        own = []
        for _ in range(count):
            number += 1
            lo, hi = spec.snr_db[0], spec.snr_db[1]
            lo = min(max(lo, MIN_SNR_DB.get(session.noise, lo)), hi)
            own.append(Recording(
                file=f"{speaker_id(split, index)}/{session.name}/{number:05d}.wav",
                num_samples=int(round(rng.uniform(*spec.duration_s(split)) * SAMPLE_RATE)),
                snr_db=hi - (hi - lo) * float(rng.random()) ** SNR_SKEW if session.noise != "none" else math.inf,
                level_dbfs=float(rng.uniform(*spec.level_dbfs))))
        recordings.append(own)
    return voice, ceps, sessions, recordings


# --- text and prosody ----------------------------------------------------------------------------------------

@dataclass
class Score:
    """Frame tracks of an utterance, each (T,): what the synthesiser plays."""

    phone: np.ndarray  # int: class index (SILENT in pauses and closures)
    harmonic_db: np.ndarray  # level of the harmonic part; -inf = unvoiced
    noise_db: np.ndarray  # level of the frication/burst noise; -inf = none
    accent: np.ndarray  # pitch-accent pulses (stressed vowels), 0..1
    phrase_time_s: np.ndarray  # time since the phrase started (declination)


def _segments(voice: Voice, session: Session, num_frames: int, rng: np.random.Generator) -> list[tuple]:
    """(class index, frames, stressed, phrase start) per phone, words of 1-3 CV(C) syllables, until the
    utterance is full."""
    speed = voice.syllables_s * session.tempo / 4.5  # the language's durations are for 4.5 syllables/s
    segs: list[tuple] = [(SILENT, int(rng.integers(8, 30)), False, True)]
    total, phrase_start = segs[0][1], True
    while total < num_frames:
        for syllable in range(int(rng.integers(1, 4))):
            phones = [str(rng.choice(ONSETS))] if rng.random() < 0.8 else []
            phones.append(str(rng.choice(VOWELS)))
            phones += [str(rng.choice(ONSETS))] if rng.random() < 0.35 else []
            for name in phones:
                kind = name.rstrip("0123456789")
                ms = KINDS[kind][1] * (voice.vowel_stretch if kind == "vowel" else 1.0) / speed
                frames = max(2, int(round(ms / 10.0 * rng.lognormal(0.0, 0.2))))
                segs.append((CLASSES.index(name), frames, syllable == 0 and kind == "vowel", phrase_start))
                phrase_start, total = False, total + frames
        if rng.random() < voice.pause_prob:
            long = rng.random() < 0.4  # a phrase boundary: F0 resets
            frames = int(rng.integers(25, 60) if long else rng.integers(8, 25))
            segs.append((SILENT, frames, False, long))
            phrase_start, total = long, total + frames
    return segs


def score(voice: Voice, session: Session, num_frames: int, rng: np.random.Generator) -> Score:
    """Lay the phone string out on frames: levels per kind, stop closures and bursts, stress, phrases."""
    segs = _segments(voice, session, num_frames, rng)
    phone = np.repeat([s[0] for s in segs], [s[1] for s in segs])[:num_frames]  # (T,)
    starts = np.cumsum([0] + [s[1] for s in segs])[:-1]
    levels = {i: KINDS[name.rstrip("0123456789")] for i, name in enumerate(CLASSES)}
    harmonic = np.array([levels[p][2] if p != SILENT else -math.inf for p in range(SILENT + 1)])[phone]
    noise = np.array([levels[p][3] if p != SILENT else -math.inf for p in range(SILENT + 1)])[phone]
    accent = np.zeros(num_frames)
    phrase = np.zeros(num_frames, dtype=bool)
    for (cls, frames, stressed, begins), start in zip(segs, starts):
        if start >= num_frames:
            break
        if cls < SILENT and CLASSES[cls].startswith("stop"):
            closure = max(1, frames - 3)  # closure silence, then a 3-frame burst + aspiration
            noise[start:start + closure] = -math.inf
        if stressed:
            accent[min(start + frames // 2, num_frames - 1)] = rng.uniform(0.4, 1.0)
        phrase[start] |= begins
    frame_index = np.arange(num_frames)
    last_start = np.maximum.accumulate(np.where(phrase, frame_index, 0))
    return Score(phone=phone, harmonic_db=harmonic, noise_db=noise,
                 # each accent a Gaussian bump (sigma 60 ms) peaking at 0.4x its drawn height
                 accent=gaussian_filter1d(accent, 6.0) * 6.0 * math.sqrt(2 * math.pi) / 2.5,
                 phrase_time_s=(frame_index - last_start) / 100.0)


def f0_track(voice: Voice, session: Session, sc: Score, rng: np.random.Generator) -> np.ndarray:
    """(T,) F0 in Hz: mean and the day's shift, declination, accents, vibrato, smoothed jitter."""
    t = np.arange(len(sc.phone)) / 100.0  # s
    semitones = (session.f0_shift_st + rng.normal(0.0, 0.5) - voice.declination_st_s * sc.phrase_time_s
                 + voice.accent_st * sc.accent)
    cents = (voice.vibrato_cents * np.sin(2 * np.pi * voice.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
             + gaussian_filter1d(rng.standard_normal(len(t)), 1.0) * voice.jitter_cents * 1.8)
    semitones = gaussian_filter1d(semitones, 3.0) + cents / 100.0
    return voice.f0_hz * 2.0 ** (semitones / 12.0)


# --- synthesis -----------------------------------------------------------------------------------------------

def frame_cepstra(ceps: np.ndarray, phone: np.ndarray) -> np.ndarray:
    """(T, ORDER + 1): the class cepstra coarticulated (one-hot classes smoothed over ~30 ms)."""
    onehot = np.zeros((len(phone), SILENT + 1))
    onehot[np.arange(len(phone)), phone] = 1.0
    weights = gaussian_filter1d(onehot, 2.0, axis=0, mode="nearest")  # (T, classes)
    return weights @ ceps


def _tilt_log(hz: np.ndarray, db_oct: float) -> np.ndarray:
    """Log amplitude (nepers) of a tilt of db_oct dB per octave about 1 kHz, flat below 100 Hz."""
    return db_oct * np.log2(np.maximum(hz, 100.0) / 1000.0) * math.log(10.0) / 20.0


def harmonic_part(cep: np.ndarray, f0: np.ndarray, level: np.ndarray, voice: Voice, session: Session,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T * HOP,) harmonic signal and (T * HOP,) its running phase (radians, wrapped) for the noise modulation.

    cep (T, M+1), f0 (T,) Hz, level (T,) linear amplitude (0 when unvoiced)."""
    num_frames = len(f0)
    centres = (np.arange(num_frames) + 0.5) * HOP
    f0_samples = np.interp(np.arange(num_frames * HOP), centres, f0)  # (N,) Hz, instantaneous frequency
    phase = np.mod(2 * np.pi * np.cumsum(f0_samples) / SAMPLE_RATE, 2 * np.pi)  # (N,) integrated, wrapped
    count = int(min(voice.mvf_hz + 750.0, TOP_HZ) // f0.min())  # harmonics K (the taper is < 1 % beyond)
    k = np.arange(1, count + 1, dtype=np.float32)  # (K,)
    hz = f0[:, None] * k  # (T, K) Hz
    alpha = compose_warps(voice.vtl_alpha)
    log_amp = (warp_basis(hz, alpha) @ cep[:, :, None].astype(np.float32))[..., 0]  # (T, K) nepers
    log_amp += _tilt_log(hz, voice.tilt_db_oct + session.effort_db_oct)
    taper = 1.0 / (1.0 + np.exp((hz - voice.mvf_hz) / 150.0)) * (hz < TOP_HZ)  # (T, K): harmonics end at MVF
    amp = (np.exp(log_amp) * taper * level[:, None]).astype(np.float32)  # (T, K)
    amps = np.stack([amp, np.concatenate([amp[1:], amp[-1:]])], axis=2)  # (T, K, 2): this frame's, the next's
    offsets = rng.uniform(0, 2 * np.pi, count).astype(np.float32)  # (K,) the voice's phase dispersion
    return sum_harmonics(phase.reshape(num_frames, HOP).astype(np.float32), k, offsets, amps), phase


def sum_harmonics(phase: np.ndarray, k: np.ndarray, offsets: np.ndarray, amps: np.ndarray,
                  chunk: int = 40) -> np.ndarray:
    """(T * HOP,) sum_k a_k(n) cos(k phase(n) + offsets_k), a_k interpolated linearly from its frame value
    amps[t, k, 0] to the next frame's amps[t, k, 1]. phase (T, HOP) radians, k and offsets (K,).
    Chunks of `chunk` frames keep the (chunk, HOP, K) block of cosines in cache."""
    ramp = np.arange(HOP, dtype=np.float32) / HOP  # (HOP,)
    wave = np.empty(phase.shape, dtype=np.float32)  # (T, HOP)
    for start in range(0, len(phase), chunk):
        cosines = np.multiply.outer(phase[start:start + chunk], k)  # (c, HOP, K)
        cosines += offsets
        np.cos(cosines, out=cosines)
        ends = cosines @ amps[start:start + chunk]  # (c, HOP, 2): at this frame's and the next frame's amplitudes
        wave[start:start + chunk] = ends[..., 0] * (1 - ramp) + ends[..., 1] * ramp
    return wave.reshape(-1)


def spectral_noise(gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """((T + 1) * HOP,) noise whose short-time spectrum is `gain` (T, len(BINS)) times that of unit white noise:
    random-phase spectra, inverse FFT, sine window, 50 % overlap-add."""
    num_frames = len(gain)
    scale = (gain * math.sqrt(FRAME / 2)).astype(np.float32)  # (T, F): unit white noise has |X|^2 = FRAME / 2
    spectra = (rng.standard_normal((num_frames, len(BINS)), dtype=np.float32)
               + 1j * rng.standard_normal((num_frames, len(BINS)), dtype=np.float32)) * scale
    frames = np.fft.irfft(spectra, n=FRAME, axis=1).astype(np.float32) * SINE  # (T, FRAME)
    out = np.zeros((num_frames + 1, HOP), dtype=np.float32)
    out[:-1] += frames[:, :HOP]
    out[1:] += frames[:, HOP:]
    return out.reshape(-1)


def noise_part(cep: np.ndarray, sc: Score, f0: np.ndarray, level: np.ndarray, phase: np.ndarray,
               voice: Voice, session: Session, rng: np.random.Generator) -> np.ndarray:
    """(T * HOP,) the noise part: aspiration (above the MVF at the envelope's level, below it 1/HNR lower,
    pulsed by the glottal cycle) plus frication and bursts through their own class envelopes."""
    num_frames = len(f0)
    alpha = compose_warps(voice.vtl_alpha)
    env = np.exp(cep @ warp_basis(BINS, alpha).T + _tilt_log(BINS, voice.tilt_db_oct + session.effort_db_oct))
    density = np.sqrt(SAMPLE_RATE / (4.0 * f0))[:, None]  # (T, 1): harmonic amplitude -> noise spectral level
    above = 1.0 / (1.0 + np.exp((voice.mvf_hz - BINS) / 150.0))  # (F,)
    hnr = 10.0 ** (-voice.hnr_db / 20.0)
    aspiration = env * density * (level[:, None] * (0.5 * above + hnr * (1 - above)))  # (T, F)
    pulse = 1.0 + 0.6 * np.cos(phase).astype(np.float32)  # glottal-cycle modulation of the aspiration
    noise_level = np.where(np.isfinite(sc.noise_db), 10.0 ** (np.nan_to_num(sc.noise_db, neginf=-200) / 20.0), 0.0)
    frication = env * math.sqrt(SAMPLE_RATE / (4.0 * voice.f0_hz)) * noise_level[:, None]  # (T, F)
    n = num_frames * HOP
    return (spectral_noise(aspiration, rng)[:n] * pulse + spectral_noise(frication, rng)[:n]).astype(np.float32)


def voice_signal(voice: Voice, ceps: np.ndarray, session: Session, num_samples: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) float32 dry speech of the voice (unscaled)."""
    num_frames = -(-num_samples // HOP)
    sc = score(voice, session, num_frames, rng)
    f0 = f0_track(voice, session, sc, rng)
    cep = frame_cepstra(ceps, sc.phone)
    voiced_db = np.nan_to_num(sc.harmonic_db, neginf=-200.0) + rng.normal(0.0, voice.shimmer_db, num_frames)
    level = gaussian_filter1d(10.0 ** (voiced_db / 20.0), 1.5)  # (T,) linear, onsets ~15 ms
    harmonic, phase = harmonic_part(cep, f0, level, voice, session, rng)
    noise = noise_part(cep, sc, f0, level, phase, voice, session, rng)
    return (harmonic + noise)[:num_samples]


# --- the channel ---------------------------------------------------------------------------------------------

def min_phase_fir(log_mag: np.ndarray, taps: int) -> np.ndarray:
    """(taps,) minimum-phase FIR of a log magnitude (nepers) on an rfft grid: fold the real cepstrum."""
    nfft = 2 * (len(log_mag) - 1)
    cepstrum = np.fft.irfft(log_mag, n=nfft)
    fold = np.zeros(nfft)
    fold[0], fold[nfft // 2] = cepstrum[0], cepstrum[nfft // 2]
    fold[1:nfft // 2] = 2.0 * cepstrum[1:nfft // 2]
    response = np.fft.irfft(np.exp(np.fft.rfft(fold)), n=nfft)[:taps]
    return (response * np.hanning(2 * taps)[taps:]).astype(np.float32)


def microphone(session: Session, depth_db: float) -> np.ndarray:
    """(256,) FIR of the session's microphone: bass roll-off (50-150 Hz, 12 dB/oct), 2-4 resonances or dips
    (1-7 kHz, gain N(0, depth_db), 0.15-0.6 octave wide), treble roll-off from 5.5-7.8 kHz."""
    rng = np.random.default_rng(session.mic_seed)
    hz = np.fft.rfftfreq(1024, 1.0 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(hz, 1.0))
    db = -10.0 * np.log10(1.0 + (rng.uniform(50.0, 150.0) / np.maximum(hz, 1.0)) ** 4)
    for _ in range(int(rng.integers(2, 5))):
        centre, width = np.log2(rng.uniform(1000.0, 7000.0)), rng.uniform(0.15, 0.6)
        db += rng.normal(0.0, depth_db) * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
    db -= 10.0 * np.log10(1.0 + (hz / rng.uniform(5500.0, 7800.0)) ** 6)
    return min_phase_fir(db * math.log(10.0) / 20.0, 256)


def room(session: Session) -> np.ndarray:
    """(L,) impulse response: direct sound, 3-8 early reflections (2-25 ms), a noise-burst tail split at
    1.5 kHz into two bands decaying 60 dB over rt60_s (low) and rt60_s / 1.5-2.5 (high), scaled to drr_db."""
    rng = np.random.default_rng(session.room_seed)
    length = int(session.rt60_s * SAMPLE_RATE)
    burst = rng.standard_normal(length)
    t = np.arange(length) / SAMPLE_RATE
    decay = 3.0 * math.log(10.0) / session.rt60_s  # 1/s: amplitude -60 dB at rt60
    tail = (_shaped(burst, lambda hz: hz < 1500.0) * np.exp(-decay * t)
            + _shaped(burst, lambda hz: hz >= 1500.0) * np.exp(-decay * rng.uniform(1.5, 2.5) * t))
    tail *= np.clip(t / 0.005, 0.0, 1.0)  # the diffuse tail builds up over 5 ms
    early = np.zeros(length)
    count = int(rng.integers(3, 9))
    early[rng.integers(32, 400, count)] = rng.uniform(0.2, 0.6, count) * rng.choice([-1.0, 1.0], count)
    reverberant = tail + early
    response = reverberant * math.sqrt(10.0 ** (-session.drr_db / 10.0) / float(np.sum(reverberant ** 2)))
    response[0] = 1.0
    return response.astype(np.float32)


def _shaped(wave: np.ndarray, gain: typing.Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`wave` (N,) through the zero-phase magnitude response gain(hz), by one FFT of a fast length."""
    size = next_fast_len(len(wave), real=True)
    hz = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    return np.fft.irfft(np.fft.rfft(wave, n=size) * gain(hz), n=size)[:len(wave)]


def _coloured(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) Gaussian noise with power spectrum ~ 1/f^exponent above 20 Hz, unit RMS."""
    wave = _shaped(rng.standard_normal(num_samples), lambda hz: np.maximum(hz, 20.0) ** (-exponent / 2))
    return wave / max(float(np.std(wave)), 1e-12)


def _tones(base_hz: float | np.ndarray, k: np.ndarray, amplitudes: np.ndarray, num_samples: int,
           rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) sum_k amplitudes_k cos(k theta + random phase_k): partials k (K,) of a base frequency
    (Hz, a constant or (num_samples,)) whose phase theta is integrated sample by sample."""
    hz = np.broadcast_to(np.asarray(base_hz, dtype=np.float64), (num_samples,))
    theta = np.mod(2 * np.pi * np.cumsum(hz) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi), 2 * np.pi)  # (N,)
    partials = np.multiply.outer(theta.astype(np.float32), np.asarray(k, dtype=np.float32))  # (N, K)
    partials += rng.uniform(0, 2 * np.pi, len(k)).astype(np.float32)
    return np.cos(partials, out=partials) @ np.asarray(amplitudes, dtype=np.float32)


def hum(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and 6-15 harmonics (odd ones stronger, falling ~6 dB/octave), a faint hiss."""
    mains = float(rng.choice([50.0, 60.0])) * rng.uniform(0.998, 1.002)
    k = np.arange(1, int(rng.integers(6, 16)) + 1)
    amplitudes = rng.uniform(0.3, 1.0, len(k)) / k * np.where(k % 2 == 1, 1.0, rng.uniform(0.1, 0.5))
    return _tones(mains, k, amplitudes, num_samples, rng) + 0.02 * rng.standard_normal(num_samples)


def hvac(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Fan / air conditioning: 1/f^1-2 noise, 1-3 wobbling blade tones (80-800 Hz), a slow swell."""
    count = int(rng.integers(1, 4))
    t = np.arange(num_samples) / SAMPLE_RATE
    wobble = 1.0 + 0.003 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t)  # (N,)
    tones = sum(_tones(rng.uniform(80.0, 800.0) * wobble, [1], [rng.uniform(0.05, 0.4)], num_samples, rng)
                for _ in range(count))
    swell = 1.0 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    return _coloured(num_samples, rng.uniform(1.0, 2.0), rng) * swell + tones


def clicks(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Clicks (1-6 per second, each a 2-10 ms damped 1-4 kHz ring, random sign and size) on a faint hiss."""
    impulses = np.zeros(num_samples)
    count = rng.poisson(rng.uniform(1.0, 6.0) * num_samples / SAMPLE_RATE)
    impulses[rng.integers(0, num_samples, count)] = rng.choice([-1.0, 1.0], count) * rng.lognormal(0.0, 0.7, count)
    t = np.arange(int(0.02 * SAMPLE_RATE)) / SAMPLE_RATE
    ring = np.sin(2 * np.pi * rng.uniform(1000.0, 4000.0) * t) * np.exp(-t / rng.uniform(0.002, 0.01))
    return oaconvolve(impulses, ring)[:num_samples] + 0.05 * rng.standard_normal(num_samples)


def music(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Distant music: a melody and a bass line on a pentatonic scale, notes of 0.15-0.6 s with 4 decaying
    harmonics and a plucked envelope, low-passed by the distance."""
    scale = 2.0 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12.0) * rng.uniform(180.0, 330.0)
    wave = np.zeros(num_samples)
    for octave, loudness in ((1.0, 1.0), (0.25, 0.7)):  # melody, bass
        lengths = (rng.uniform(0.15, 0.6, num_samples // 2400 + 2) * SAMPLE_RATE).astype(int)
        note = np.repeat(rng.integers(0, len(scale), len(lengths)), lengths)[:num_samples]  # (N,)
        onset = np.repeat(np.cumsum(lengths) - lengths, lengths)[:num_samples]
        pluck = np.exp(-(np.arange(num_samples) - onset) / (0.25 * SAMPLE_RATE))  # (N,)
        k = np.arange(1, 5)
        wave += loudness * pluck * _tones(scale[note] * octave, k, 0.6 ** k, num_samples, rng)
    corner = rng.uniform(1500.0, 3000.0)
    return _shaped(wave, lambda hz: 1.0 / (1.0 + (hz / corner) ** 2))


ENVIRONMENTS = {"hum": hum, "hvac": hvac, "clicks": clicks, "music": music}  # NOISE_KINDS key -> maker


def mu_law(wave: np.ndarray) -> np.ndarray:
    """8-bit mu-law (mu = 255, G.711) quantisation and expansion of a signal in [-1, 1]."""
    compressed = np.sign(wave) * np.log1p(255.0 * np.minimum(np.abs(wave), 1.0)) / math.log(256.0)
    quantised = np.round(compressed * 127.0) / 127.0
    return np.sign(quantised) * np.expm1(np.abs(quantised) * math.log(256.0)) / 255.0


def agc(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Automatic gain control (frame-RMS gain towards -20 dBFS within +-12 dB, smoothed over ~0.3 s by a
    one-pole filter at frame rate), then tanh soft clipping with a drive of 1.5-4."""
    frames = np.pad(wave, (0, -len(wave) % HOP)).reshape(-1, HOP)
    rms_db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)  # (T,)
    gain_db = np.clip(-20.0 - rms_db, -12.0, 12.0)
    gain_db = lfilter([0.03], [1.0, -0.97], gain_db, zi=[0.97 * gain_db[0]])[0]  # (T,) ~0.33 s time constant
    gain = np.repeat(10.0 ** (gain_db / 20.0), HOP)[:len(wave)]
    drive = rng.uniform(1.5, 4.0)
    return np.tanh(drive * wave * gain) / drive


def codec(wave: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The session's codec on a signal at its final level."""
    if kind == "agc":
        return agc(wave, rng)
    if kind == "mulaw":
        return mu_law(wave)
    if kind == "narrowband":  # 16 -> 8 kHz (polyphase anti-aliasing), G.711, back to 16 kHz
        return resample_poly(mu_law(resample_poly(wave, 1, 2)), 2, 1)[:len(wave)]
    return wave


def active_power(wave: np.ndarray) -> float:
    """Mean power of the frames within 30 dB of the loudest one (speech without its pauses)."""
    frames = np.pad(wave, (0, -len(wave) % HOP)).reshape(-1, HOP).astype(np.float64)
    power = np.mean(frames ** 2, axis=1)
    return float(np.mean(power[power > 1e-3 * power.max()])) if power.max() > 0 else 1e-20


def synthesize(voice: Voice, ceps: np.ndarray, session: Session, recording: Recording, spec: HarmonicSpec,
               rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) float32 in [-1, 1]: the voice -> room -> + environment -> microphone -> level -> codec."""
    n = recording.num_samples
    speech = voice_signal(voice, ceps, session, n, rng).astype(np.float64)
    if spec.reverb:
        speech = oaconvolve(speech, room(session))[:n]
    if math.isfinite(recording.snr_db):
        noise = ENVIRONMENTS[session.noise](n, rng)
        speech += noise * math.sqrt(active_power(speech) / active_power(noise) / 10.0 ** (recording.snr_db / 10.0))
    if spec.channel:
        speech = oaconvolve(speech, microphone(session, spec.mic_depth_db))[:n]
    speech *= 10.0 ** (recording.level_dbfs / 20.0) / math.sqrt(max(float(np.mean(speech ** 2)), 1e-20))
    speech = codec(speech, session.codec, rng)
    peak = float(np.abs(speech).max())
    return (speech * (0.95 / peak if peak > 0.95 else 1.0)).astype(np.float32)


# --- a speaker, the corpus ------------------------------------------------------------------------------------

def generate_speaker(spec: HarmonicSpec, split: str, index: int, wav_dir: Path) -> dict:
    """Write one speaker's files under `wav_dir`; return its meta.json entry."""
    voice, ceps, sessions, recordings = speaker_plan(spec, split, index)
    number = 0
    for session, own in zip(sessions, recordings):
        for recording in own:
            number += 1
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS.index(split), index, number]))
            wave = synthesize(voice, ceps, session, recording, spec, rng)
            path = wav_dir / recording.file
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.round(wave * 32767.0).astype(np.int16), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return {"id": speaker_id(split, index), "voice": _rounded(dataclasses.asdict(voice)),
            "sessions": [_rounded({**dataclasses.asdict(s), "recordings": [dataclasses.asdict(r) for r in own]})
                         for s, own in zip(sessions, recordings)]}


def _speaker_task(task: tuple[HarmonicSpec, str, int, Path]) -> dict:
    return generate_speaker(*task)


def _synthesise_all(root: Path, spec: HarmonicSpec, workers: int) -> dict:
    """Every speaker's files and the trial lists under `root`; the meta.json content."""
    tasks = [(spec, split, i, root / split / "wav") for split in SPLITS for i in range(spec.num_speakers(split))]
    start = time.monotonic()
    log.info("synthesising %d harmonic voices with %d worker(s) into %s", len(tasks), workers, root)
    entries: list[dict] = []
    if workers == 1:
        results = map(_speaker_task, tasks)
    else:  # spawn: no fork of a parent that may hold torch threads
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_speaker_task, tasks)
    try:
        for entry in results:
            entries.append(entry)
            _progress(len(entries), len(tasks), start)
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    meta = {"generator": "voiceprint data.synth_harmonic", "version": VERSION, "sample_rate": SAMPLE_RATE,
            "spec": dataclasses.asdict(spec), "splits": {}}
    for number, split in enumerate(SPLITS):
        mine = [e for e in entries if e["id"].startswith(f"id{number}")]
        meta["splits"][split] = {"speakers": mine}
        if spec.num_trials(split):
            utterances = [(e["id"], s["name"], r["file"]) for e in mine for s in e["sessions"] for r in s["recordings"]]
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, number, 10**6]))
            write_trials(root / split / "trials.txt", make_trials(utterances, spec.num_trials(split), rng))
    seconds = sum(r["num_samples"] for e in entries for s in e["sessions"] for r in s["recordings"]) / SAMPLE_RATE
    log.info("synthesised %.0f s of audio (%.2f h) in %.0f s", seconds, seconds / 3600, time.monotonic() - start)
    return meta


def generate_corpus(out_dir: Path, spec: HarmonicSpec = HarmonicSpec(), *, workers: int = 2,
                    overwrite: bool = False) -> None:
    """Write the corpus of `spec` into a temporary sibling of `out_dir`, `.complete` last, and rename it in
    (data.synth's publication: an incomplete corpus is replaced, a complete one only when `overwrite`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not _looks_like_corpus(out_dir):
        raise SynthError(f"{out_dir}: exists and is not a generated corpus; not touching it")
    if (out_dir / COMPLETE).is_file() and not overwrite:
        raise SynthError(f"{out_dir}: a complete corpus is already there (--force / overwrite=True replaces it)")
    if workers < 1:
        raise SynthError(f"workers must be at least 1; got {workers}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)  # the permissions mkdir would have given
    try:
        meta = _synthesise_all(staging, spec, workers)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        (staging / COMPLETE).write_text(TAG + "\n")
        _publish(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


DEMO_SPEC = HarmonicSpec()  # what ensure_demo_corpus generates (tests swap in a tiny one)
DEMO_WORKERS = 2  # and with how many processes


def ensure_demo_corpus(root: Path, spec: HarmonicSpec | None = None) -> None:
    """Generate the corpus of `spec` (default: DEMO_SPEC) in `root` unless a complete one made by this version
    of this generator is there; a corpus by another generator or version is replaced."""
    root = Path(root)
    try:
        tag = (root / COMPLETE).read_text().strip()
    except OSError:
        tag = None
    if tag == TAG:
        return
    log.info("generating the harmonic corpus in %s (%s)", root, "first use" if tag is None else f"was: {tag}")
    generate_corpus(root, spec or DEMO_SPEC, workers=DEMO_WORKERS, overwrite=tag is not None)


DEMO_GENERATORS = {"formant": ensure_formant_corpus, "harmonic": ensure_demo_corpus}  # config demo_generator


def ensure_generated(root: Path, generator: str) -> None:
    """The demo corpus in `root`, made by `generator` (a DEMO_GENERATORS key) when absent, stale or another's."""
    if generator not in DEMO_GENERATORS:
        raise SynthError(f"unknown demo generator {generator!r}; choose from {', '.join(DEMO_GENERATORS)}")
    DEMO_GENERATORS[generator](root)


# --- command line ----------------------------------------------------------------------------------------------

def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """--num-train-speakers N, --snr-db MIN MAX, --noise / --no-noise: one flag per HarmonicSpec field."""
    hints = typing.get_type_hints(HarmonicSpec)
    for f in dataclasses.fields(HarmonicSpec):
        kind, name = hints[f.name], "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(name, type=typing.get_args(kind)[0], nargs=2, metavar=("MIN", "MAX"),
                                default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(name, type=kind, default=f.default, help=f.metadata["help"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.synth_harmonic", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("corpora/harmonic"), help="corpus folder to create")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (the files do not depend on it)")
    parser.add_argument("--force", action="store_true", help="replace a complete corpus already in --out")
    add_spec_flags(parser)
    args = vars(parser.parse_args(argv))
    spec = HarmonicSpec(**{f.name: tuple(args[f.name]) if isinstance(f.default, tuple) else args[f.name]
                           for f in dataclasses.fields(HarmonicSpec)})
    generate_corpus(args["out"], spec, workers=args["workers"], overwrite=args["force"])
    log.info("corpus ready: %s", args["out"])


if __name__ == "__main__":
    run_main(main)
