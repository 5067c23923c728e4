"""The demo corpus grammar (grammar.yaml): loading, checking and sampling texts."""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

WORDS_RE = re.compile(r"^[a-z']+( [a-z']+)*$")
SLOT_RE = re.compile(r"\{(\w+)\}")
KINDS = ("keywords", "commands", "sentences")


class GrammarError(ValueError):
    """grammar.yaml is missing a field or holds an unusable entry."""


@dataclass(frozen=True)
class Intent:
    """One Fluent-Speech-Commands-style label with the texts that express it."""
    action: str
    object: str
    location: str
    phrasings: tuple


@dataclass
class Grammar:
    mix: dict            # kind -> share of the audio budget
    keywords: list       # the 10 KS target words
    unknown_words: list  # KS filler words (`_unknown_`)
    silence_share: float
    unknown_share: float
    intents: list        # of Intent
    templates: list      # sentence templates with {slot} fields
    slots: dict          # slot -> list of words / phrases

    def sample_sentence(self, rng):
        template = self.templates[int(rng.integers(len(self.templates)))]
        return SLOT_RE.sub(lambda m: _pick(self.slots[m.group(1)], rng), template)

    @staticmethod
    def sample_command(intent, rng):
        return _pick(intent.phrasings, rng)


def _pick(options, rng):
    return options[int(rng.integers(len(options)))]


def _check_text(text, where, path):
    if not isinstance(text, str) or not WORDS_RE.match(text):
        raise GrammarError(
            f"{path}: {where}: {text!r} is not lower-case words (quote yes/no/on/off, "
            "which YAML reads as booleans)")
    return text


def _require(mapping, key, where, path):
    if not isinstance(mapping, dict) or key not in mapping:
        raise GrammarError(f"{path}: missing '{key}' in {where}")
    return mapping[key]


def _load_intents(commands, path):
    locations = _require(commands, "locations", "commands", path)
    intents = []
    for i, entry in enumerate(_require(commands, "intents", "commands", path)):
        where = f"commands.intents[{i}]"
        action = str(_require(entry, "action", where, path))
        obj = str(_require(entry, "object", where, path))
        phrasings = [_check_text(t, where, path) for t in entry.get("phrasings", [])]
        if phrasings:
            intents.append(Intent(action, obj, "none", tuple(phrasings)))
        for location in entry.get("locations", []):
            spoken = _check_text(_require(locations, location, "commands.locations", path), where, path)
            located = [t.replace("{location}", spoken) for t in entry.get("located_phrasings", [])]
            if not located:
                raise GrammarError(f"{path}: {where} has locations but no located_phrasings")
            intents.append(Intent(action, obj, location,
                                  tuple(_check_text(t, where, path) for t in located)))
        if not phrasings and not entry.get("locations"):
            raise GrammarError(f"{path}: {where} has neither phrasings nor locations")
    return intents


def _load_sentences(sentences, path):
    templates = _require(sentences, "templates", "sentences", path)
    slots = _require(sentences, "slots", "sentences", path)
    for slot, words in slots.items():
        if not words:
            raise GrammarError(f"{path}: sentences.slots.{slot} is empty")
        for word in words:
            _check_text(word, f"sentences.slots.{slot}", path)
    for template in templates:
        for slot in SLOT_RE.findall(template):
            if slot not in slots:
                raise GrammarError(f"{path}: template {template!r} uses unknown slot {{{slot}}}")
        _check_text(SLOT_RE.sub("x", template), "sentences.templates", path)
    return list(templates), {k: list(v) for k, v in slots.items()}


def load_grammar(path):
    """Read and check grammar.yaml; raises GrammarError naming the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise GrammarError(f"grammar file {path} does not exist; pass --grammar egs/demo/local/grammar.yaml")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    mix = _require(raw, "mix", "the top level", path)
    for kind in KINDS:
        share = _require(mix, kind, "mix", path)
        if not isinstance(share, (int, float)) or share <= 0:
            raise GrammarError(f"{path}: mix.{kind} must be a positive number, got {share!r}")
    keywords = _require(raw, "keywords", "the top level", path)
    targets = [_check_text(w, "keywords.targets", path) for w in _require(keywords, "targets", "keywords", path)]
    unknown = [_check_text(w, "keywords.unknown", path) for w in _require(keywords, "unknown", "keywords", path)]
    silence_share = float(keywords.get("silence_share", 0.08))
    if not 0 <= silence_share < 1:
        raise GrammarError(f"{path}: keywords.silence_share must be in [0, 1), got {silence_share}")
    unknown_share = float(keywords.get("unknown_share", 0.25))
    if not 0 <= unknown_share <= 1:
        raise GrammarError(f"{path}: keywords.unknown_share must be in [0, 1], got {unknown_share}")
    intents = _load_intents(_require(raw, "commands", "the top level", path), path)
    templates, slots = _load_sentences(_require(raw, "sentences", "the top level", path), path)
    return Grammar(dict(mix), targets, unknown, silence_share, unknown_share, intents, templates, slots)
