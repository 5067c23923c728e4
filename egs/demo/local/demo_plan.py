"""Plan of the demo corpus: speakers, utterances, texts, splits and augmentation draws.

Everything random is drawn here, in a fixed order, from one numpy Generator seeded with
--seed, so the plan (and therefore every file) is the same on every run.
"""

import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from demo_audio import NOISE_KINDS
from demo_grammar import Intent

# espeak-ng accents and voice variants; a speaker is one (accent, variant) pair plus
# its own pitch and rate, so up to len(ACCENTS) * len(VARIANTS) distinct speakers.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")
MIN_SPEAKERS = 20
PARTITIONS = ("train", "dev", "test")

SPEED_RANGE = (0.9, 1.1)        # speed perturbation factor
SNR_RANGE_DB = (5.0, 25.0)      # speech-to-noise ratio of spoken clips
SPEECH_LEVEL_DB = (-30.0, -16.0)  # RMS of the clean speech, dBFS
SILENCE_LEVEL_DB = (-50.0, -25.0)  # RMS of noise-only clips, dBFS
PAD_RANGE_S = (0.1, 0.4)        # silence (then noise) before and after a command/sentence
KEYWORD_CLIP_S = 1.0            # Speech Commands clips are exactly 1 s
MIN_PER_SPEAKER = 2             # of each kind, so every speaker appears in every task


class PlanError(ValueError):
    """The requested corpus cannot be planned (bad option value)."""


@dataclass(frozen=True)
class Speaker:
    index: int
    name: str       # spk001, ...
    accent: str     # espeak-ng voice, e.g. en-gb-scotland
    variant: str    # espeak-ng variant, e.g. f3
    pitch: int      # espeak-ng -p
    rate: int       # espeak-ng -s (words per minute)
    partition: str  # train / dev / test for the speaker-disjoint tasks

    @property
    def espeak_voice(self):
        return f"{self.accent}+{self.variant}"

    @property
    def gender(self):
        return "f" if self.variant.startswith("f") else "m"


@dataclass
class Utterance:
    index: int                 # position in the plan; seeds this utterance's noise
    utt_id: str                # <speaker>-<kind tag><nnnn>
    speaker: Speaker
    kind: str                  # keyword / silence / command / sentence
    text: str                  # lower-case words; "" for silence
    keyword: Optional[str] = None
    intent: Optional[Intent] = None
    speed: float = 1.0
    snr_db: float = float("inf")
    noise_kind: str = "white"
    level_db: float = -20.0
    pad_before: float = 0.0    # seconds, or for keywords the offset share inside the 1 s clip
    pad_after: float = 0.0
    sid_split: Optional[str] = None  # train/dev/test for speaker identification
    sid_only: bool = False     # an extra SID test utterance: in the VoxCeleb1 layout only
    flac_path: Optional[str] = None  # LibriSpeech copy (sentences only)
    # filled in after rendering
    wav_path: str = ""
    num_samples: int = 0
    phones: list = field(default_factory=list)

    @property
    def partition(self):
        return self.speaker.partition


KIND_TAGS = {"keyword": "kw", "silence": "sil", "command": "cmd", "sentence": "snt"}


def make_speakers(num_speakers, rng):
    """`num_speakers` distinct espeak speakers split into train/dev/test partitions."""
    pairs = list(itertools.product(ACCENTS, VARIANTS))
    if not MIN_SPEAKERS <= num_speakers <= len(pairs):
        raise PlanError(f"--num-speakers must be between {MIN_SPEAKERS} and {len(pairs)}, got {num_speakers}")
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:num_speakers]]
    n_held_out = max(2, int(round(0.1 * num_speakers)))
    partition_order = rng.permutation(num_speakers)
    partitions = {}
    for rank, idx in enumerate(partition_order):
        partitions[int(idx)] = "dev" if rank < n_held_out else "test" if rank < 2 * n_held_out else "train"
    return [Speaker(i, f"spk{i + 1:03d}", accent, variant, int(rng.integers(25, 76)),
                    int(rng.integers(140, 196)), partitions[i])
            for i, (accent, variant) in enumerate(chosen)]


def estimated_seconds(utt):
    """Duration estimate used to meet the --minutes budget before anything is spoken."""
    if utt.kind in ("keyword", "silence"):
        return KEYWORD_CLIP_S
    words = len(utt.text.split())
    # fitted on espeak-ng 1.51 output: it speaks faster than -s words per minute, plus ~0.55 s of edges
    return (0.55 + 0.75 * words * 60.0 / utt.speaker.rate) / utt.speed + utt.pad_before + utt.pad_after


class _Planner:
    def __init__(self, grammar, speakers, rng):
        self.grammar = grammar
        self.speakers = speakers
        self.rng = rng
        self.utterances = []
        self.counters = {}
        self.intent_queues = {p: [] for p in PARTITIONS}

    def _new(self, speaker, kind, text, **kwargs):
        key = (speaker.name, kind)
        self.counters[key] = self.counters.get(key, 0) + 1
        utt = Utterance(len(self.utterances), f"{speaker.name}-{KIND_TAGS[kind]}{self.counters[key]:04d}",
                        speaker, kind, text, **kwargs)
        self._draw_augmentation(utt)
        self.utterances.append(utt)
        return utt

    def _draw_augmentation(self, utt):
        rng = self.rng
        utt.noise_kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
        if utt.kind == "silence":
            utt.level_db = float(rng.uniform(*SILENCE_LEVEL_DB))
            return
        utt.speed = round(float(rng.uniform(*SPEED_RANGE)), 2)
        utt.snr_db = round(float(rng.uniform(*SNR_RANGE_DB)), 1)
        utt.level_db = float(rng.uniform(*SPEECH_LEVEL_DB))
        if utt.kind == "keyword":
            utt.pad_before = float(rng.uniform())
        else:
            utt.pad_before = round(float(rng.uniform(*PAD_RANGE_S)), 3)
            utt.pad_after = round(float(rng.uniform(*PAD_RANGE_S)), 3)

    def _speaker_cycle(self):
        while True:
            for i in self.rng.permutation(len(self.speakers)):
                yield self.speakers[int(i)]

    def _next_intent(self, partition):
        # every intent once (in random order) before any repeats, so the train split
        # holds every label value the dev/test splits use
        queue = self.intent_queues[partition]
        if not queue:
            queue.extend(self.grammar.intents[int(i)] for i in self.rng.permutation(len(self.grammar.intents)))
        return queue.pop()

    def _add(self, kind, speaker):
        g, rng = self.grammar, self.rng
        if kind == "keyword":
            draw = rng.uniform()
            if draw < g.silence_share:
                return self._new(speaker, "silence", "")
            words = g.unknown_words if rng.uniform() < g.unknown_share else g.keywords
            word = words[int(rng.integers(len(words)))]
            return self._new(speaker, "keyword", word, keyword=word)
        if kind == "command":
            intent = self._next_intent(speaker.partition)
            return self._new(speaker, "command", g.sample_command(intent, rng), intent=intent)
        return self._new(speaker, "sentence", g.sample_sentence(rng))

    def fill(self, kind, budget_seconds):
        """Add utterances of `kind` round-robin over speakers until every speaker has
        MIN_PER_SPEAKER of them and their estimated duration reaches the budget."""
        spent = 0.0
        # train speakers first, so the first intents of each queue land in train
        for speaker in sorted(self.speakers, key=lambda s: s.partition != "train"):
            for _ in range(MIN_PER_SPEAKER):
                spent += estimated_seconds(self._add(kind, speaker))
        for speaker in self._speaker_cycle():
            if spent >= budget_seconds:
                break
            spent += estimated_seconds(self._add(kind, speaker))

    def add_test_extras(self, counts):
        unknown = sorted(set(counts) - set(EXTRA_TEST_TASKS))
        if unknown or any(n < 0 for n in counts.values()):
            raise PlanError(f"--extra-test: give counts >= 0 for tasks {', '.join(EXTRA_TEST_TASKS)}, got {counts}")
        testers = [s for s in self.speakers if s.partition == "test"]
        for kind, task in (("keyword", "ks"), ("command", "ic"), ("sentence", "pr")):
            for i in range(counts.get(task, 0)):
                self._add(kind, testers[i % len(testers)])
        for i in range(counts.get("sid", 0)):
            utt = self._new(self.speakers[i % len(self.speakers)], "command", "")
            utt.intent = self._next_intent("test")
            utt.text = self.grammar.sample_command(utt.intent, self.rng)
            utt.sid_split, utt.sid_only = "test", True

    def assign_sid_splits(self):
        """Speaker identification: each speaker's commands and sentences split 80/10/10,
        so every speaker is in train, dev and test."""
        for speaker in self.speakers:
            pool = [u for u in self.utterances
                    if u.speaker is speaker and u.kind in ("command", "sentence")]
            order = self.rng.permutation(len(pool))
            n_held = max(1, int(round(0.1 * len(pool))))
            for rank, i in enumerate(order):
                pool[int(i)].sid_split = "dev" if rank < n_held else "test" if rank < 2 * n_held else "train"


EXTRA_TEST_TASKS = ("ks", "ic", "sid", "pr")


def plan_corpus(grammar, num_speakers, minutes, seed, extra_test=None):
    """Speakers and utterances of a corpus of about `minutes` minutes of audio.

    `extra_test` ({"ks": n, "ic": n, "sid": n, "pr": n}) adds test utterances on top of the budget, drawn after
    everything else (the rest of the plan stays the same): KS keyword clips, IC commands and PR sentences of the
    test speakers, and SID commands of every speaker (in the VoxCeleb1 test split only, nowhere else), so that
    the test sets give narrow intervals.
    """
    if minutes <= 0:
        raise PlanError(f"--minutes must be positive, got {minutes}")
    rng = np.random.default_rng(seed)
    speakers = make_speakers(num_speakers, rng)
    planner = _Planner(grammar, speakers, rng)
    total_share = sum(grammar.mix.values())
    for kind, plural in (("keyword", "keywords"), ("command", "commands"), ("sentence", "sentences")):
        planner.fill(kind, minutes * 60.0 * grammar.mix[plural] / total_share)
    planner.assign_sid_splits()
    planner.add_test_extras(extra_test or {})
    return speakers, planner.utterances
