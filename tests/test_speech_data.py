"""make_speech_sequences: shapes, the seed, the factors (recoverable in principle), and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from clbook.data import SpeechSequences, make_speech_sequences


@pytest.fixture(scope="module")
def data() -> SpeechSequences:
    return make_speech_sequences(n_speakers=4, n_sequences=320, length=512, seed=3, n_phonemes=5)


def test_shapes_dtypes_and_balance(data):
    x, speaker, phoneme = data
    assert x.shape == (320, 1, 512) and x.dtype == torch.float32
    assert speaker.shape == (320,) and speaker.dtype == torch.int64
    assert phoneme.shape == (320, 512) and phoneme.dtype == torch.int64
    assert torch.bincount(speaker).tolist() == [80] * 4  # balanced speakers
    assert int(phoneme.min()) >= 0 and int(phoneme.max()) < 5 and len(torch.unique(phoneme)) == 5
    assert data.period.shape == data.scale.shape == data.radius.shape == (4,) and data.formants.shape == (5, 2)
    assert ((data.period >= 8) & (data.period <= 16)).all() and ((data.scale >= 0.9) & (data.scale <= 1.1)).all()
    assert torch.isfinite(x).all()


def test_phonemes_switch_in_segments_within_the_range(data):
    _, _, phoneme = data
    for row in phoneme[:40]:
        starts = [0] + ((row[1:] != row[:-1]).nonzero().flatten() + 1).tolist()
        lengths = np.diff(starts + [len(row)])
        assert all(96 <= n <= 288 for n in lengths[:-1])  # every complete segment; the last is cut by T
        assert lengths[-1] <= 288
        values = [int(row[s]) for s in starts]
        assert all(a != b for a, b in zip(values, values[1:]))  # a change is a change of phoneme
    # Formants: no two phonemes share a slice of either range.
    for column, (low, high) in enumerate([(0.04, 0.15), (0.18, 0.40)]):
        slots = ((make_speech_sequences(n_phonemes=6, n_sequences=2, length=8).formants[:, column] - low)
                 / (high - low) * 6).floor()
        assert sorted(slots.tolist()) == list(range(6))


def test_same_seed_same_data_other_seed_other_data(data):
    again = make_speech_sequences(n_speakers=4, n_sequences=320, length=512, seed=3, n_phonemes=5)
    for a, b in zip((*data, data.period, data.formants), (*again, again.period, again.formants)):
        assert torch.equal(a, b)
    other = make_speech_sequences(n_speakers=4, n_sequences=320, length=512, seed=4, n_phonemes=5)
    assert not torch.equal(other.x, data.x) and not torch.equal(other.period, data.period)
    # The global random state is neither used nor changed.
    torch.manual_seed(0)
    np.random.seed(0)
    expected = torch.rand(1), np.random.rand()
    torch.manual_seed(0)
    np.random.seed(0)
    make_speech_sequences(n_sequences=4, length=64)
    assert torch.equal(torch.rand(1), expected[0]) and np.random.rand() == expected[1]


def test_without_noise_each_sequence_is_standardized_and_the_noise_adds_its_variance():
    clean = make_speech_sequences(n_sequences=16, length=256, seed=0, noise=0.0)
    assert torch.allclose(clean.x.mean(dim=2), torch.zeros(16, 1), atol=1e-5)
    assert torch.allclose(clean.x.std(dim=2, unbiased=False), torch.ones(16, 1), atol=1e-5)
    noisy = make_speech_sequences(n_sequences=16, length=256, seed=0, noise=0.5)
    assert torch.equal(noisy.phoneme, clean.phoneme) and torch.equal(noisy.speaker, clean.speaker)
    residual = noisy.x - clean.x
    assert abs(residual.std().item() - 0.5) < 0.02


def test_the_pulses_come_at_the_speakers_pitch():
    # Without jitter or noise, the signal's autocorrelation peaks at the pitch period (rounded pulses: +-1 sample).
    d = make_speech_sequences(n_speakers=3, n_sequences=12, length=2048, seed=5, noise=0.0, jitter=0.0)
    for i in range(12):
        s = d.x[i, 0].double()
        lags = torch.arange(6, 20)
        ac = torch.stack([(s[:-lag] * s[lag:]).mean() for lag in lags.tolist()])
        assert abs(int(lags[ac.argmax()]) - float(d.period[d.speaker[i]])) <= 1.0


def test_the_factors_are_recoverable_in_principle(data):
    """What a model could learn: the speaker from a sequence's autocorrelation, the phoneme from a frame's spectrum."""
    x, speaker, phoneme = data
    signal = x[:, 0].double().numpy()
    ac = np.stack([(signal[:, :-lag] * signal[:, lag:]).mean(axis=1) for lag in range(1, 33)], axis=1)
    fit, held = slice(0, 240), slice(240, 320)
    speaker_acc = LogisticRegression(max_iter=2000).fit(ac[fit], speaker[fit]).score(ac[held], speaker[held])
    assert speaker_acc >= 0.9  # chance 0.25
    frames = signal[:, :512].reshape(320, 16, 32) * np.hanning(32)
    spectra = np.log(np.abs(np.fft.rfft(frames, axis=2)) + 1e-2).reshape(-1, 17)
    labels = phoneme[:, 16::32].reshape(-1).numpy()  # the phoneme at each frame's centre
    n = 240 * 16
    phoneme_acc = LogisticRegression(max_iter=2000).fit(spectra[:n], labels[:n]).score(spectra[n:], labels[n:])
    assert phoneme_acc >= 2.5 / 5  # chance 0.2; frames across a phoneme change stay ambiguous


@pytest.mark.parametrize("kwargs, message", [
    ({"n_speakers": 0}, "n_speakers must be a positive integer"),
    ({"n_sequences": 2.5}, "n_sequences must be a positive integer"),
    ({"length": -1}, "length must be a positive integer"),
    ({"seed": -1}, "seed must be an integer"),
    ({"n_phonemes": 1}, "n_phonemes must be an integer >= 2"),
    ({"segment": (50, 10)}, "shortest <= longest"),
    ({"segment": 10}, "segment must be a pair"),
    ({"segment": (0, 10)}, r"segment\[0\] must be a positive integer"),
    ({"noise": -0.1}, "noise must be a finite number >= 0"),
    ({"noise": float("nan")}, "noise must be a finite number"),
    ({"jitter": 0.8}, "jitter must be a finite number >= 0.0 and <= 0.5"),
])
def test_bad_inputs_raise_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        make_speech_sequences(**kwargs)
    assert "\n" not in str(err.value)
