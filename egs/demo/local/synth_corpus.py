#!/usr/bin/env python3
"""Synthesise the self-contained demo corpus of egs/demo with espeak-ng (no downloads).

Usage (from egs/demo, with path.sh sourced):
    python local/synth_corpus.py --out-audio downloads/demo --out-data data \\
        [--minutes 60] [--seed 1234] [--nj 2] [--num-speakers 24] [--force]
    python local/synth_corpus.py --minutes 3 ...   # tiny CI setting (about 5 min of audio)

Speakers are espeak-ng voices (accent x variant x pitch x rate); every clip gets a speed
change (0.9-1.1) and additive noise (white, pink, brown, hum or babble at 5-25 dB SNR).
Texts come from local/grammar.yaml: Speech Commands keywords (+ unknown words and
noise-only `_silence_` clips), Fluent-Speech-Commands-style commands with
(action, object, location) labels, and read sentences with word and phoneme labels.

Writes
  <out-data>/{train,dev,test}/  Kaldi dirs (wav.scp, text, utt2spk, spk2utt, utt2num_samples,
                                phones, spk2gender, utt2category); speaker-disjoint splits
  <out-audio>/wav/<spk>/<utt>.wav                 canonical 16 kHz 16-bit mono audio
  <out-audio>/speech_commands_v0.01/ + speech_commands_test_set_v0.01/   s3prl speech_commands
  <out-audio>/fluent_speech_commands_dataset/                           s3prl fluent_commands
  <out-audio>/VoxCeleb1/{dev,test}/wav/, iden_split.txt                 s3prl voxceleb1
  <out-audio>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/       s3prl asr / ctc
  <out-audio>/superb/asr/ (len_for_bucket, char.dict), superb/pr/ (libriphone csv, lexicon, vocab)
  <out-audio>/s3prl_paths.yaml                    the config keys each downstream task needs
A finished run leaves <out-audio>/.synth_corpus.done; a rerun with the same settings
does nothing, one with other settings stops unless --force is given.
"""

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_audio as audio  # noqa: E402
import demo_layouts as layouts  # noqa: E402
from demo_grammar import GrammarError, load_grammar  # noqa: E402
from demo_plan import KEYWORD_CLIP_S, PlanError, plan_corpus  # noqa: E402

DEFAULT_GRAMMAR = Path(__file__).resolve().parent / "grammar.yaml"
DONE_MARKER = ".synth_corpus.done"
NOISE_BANK_SECONDS = 60.0
BABBLE_VOICES = ("en-us+m2", "en-gb+f2", "en-029+m5", "en-gb-scotland+f4")
FORMAT_VERSION = 1  # bump when the produced files change for the same settings


class CorpusError(RuntimeError):
    """The corpus cannot be written (missing tool, outputs made with other settings)."""


def get_parser():
    parser = argparse.ArgumentParser(
        description="Synthesise the egs/demo corpus with espeak-ng (Kaldi dirs + s3prl task layouts).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-audio", default="downloads/demo", help="directory for audio and s3prl layouts")
    parser.add_argument("--out-data", default="data", help="directory for the Kaldi data dirs train/dev/test")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="audio to generate; at least 2 clips of each kind per speaker are always made")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every random choice")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    parser.add_argument("--num-speakers", type=int, default=24, help="distinct espeak speakers (20-104)")
    parser.add_argument("--extra-test", default="", metavar="ks=N,ic=N,sid=N,pr=N",
                        help="test utterances added on top of --minutes, per task (KS clips, IC commands and PR "
                             "sentences of the test speakers; SID commands of every speaker, SID layout only)")
    parser.add_argument("--grammar", default=str(DEFAULT_GRAMMAR), help="grammar YAML file")
    parser.add_argument("--force", action="store_true", help="regenerate even if a finished corpus is present")
    return parser


# ---------------------------------------------------------------- rendering (worker side)

_WORKER = {}


def _init_worker(noise_bank, seed):
    _WORKER["bank"] = noise_bank
    _WORKER["seed"] = seed


def render_utterance(utt):
    """Speak, speed-perturb, resample, add noise and write one utterance.
    Returns (plan index, number of samples)."""
    rng = np.random.default_rng([_WORKER["seed"], utt.index])
    bank = _WORKER["bank"]
    clip_len = int(KEYWORD_CLIP_S * audio.TARGET_RATE)
    level = 10.0 ** (utt.level_db / 20.0)
    if utt.kind == "silence":
        wav = audio.noise_segment(bank[utt.noise_kind], clip_len, rng) * level
    else:
        raw = audio.espeak_synthesize(utt.text, utt.speaker.espeak_voice, utt.speaker.pitch, utt.speaker.rate)
        speech = audio.change_speed_and_resample(raw, utt.speed)
        speech *= level / audio.rms(speech)
        if utt.kind == "keyword":
            canvas = audio.place_in_window(speech, clip_len, int(utt.pad_before * (clip_len - len(speech))))
        else:
            canvas = np.concatenate([np.zeros(int(utt.pad_before * audio.TARGET_RATE), np.float32), speech,
                                     np.zeros(int(utt.pad_after * audio.TARGET_RATE), np.float32)])
        noise = audio.noise_segment(bank[utt.noise_kind], len(canvas), rng)
        wav = audio.add_noise(canvas, noise, utt.snr_db, speech_power_ref=speech)
    wav = audio.to_pcm16_range(wav)
    Path(utt.wav_path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(utt.wav_path, wav, audio.TARGET_RATE, subtype="PCM_16")
    if utt.flac_path:
        Path(utt.flac_path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(utt.flac_path, wav, audio.TARGET_RATE, format="FLAC", subtype="PCM_16")
    return utt.index, len(wav)


def assign_phonemes(utts, nj):
    """Phoneme labels of every spoken utterance, in its speaker's accent (one espeak-ng
    process per accent)."""
    texts_by_accent = defaultdict(set)
    for u in utts:
        if u.text:
            texts_by_accent[u.speaker.accent].add(u.text)
    jobs = {accent: sorted(texts) for accent, texts in texts_by_accent.items()}
    with ThreadPoolExecutor(nj) as pool:
        futures = {accent: pool.submit(audio.espeak_phonemes, texts, accent) for accent, texts in jobs.items()}
        lookup = {(accent, text): phones for accent, future in futures.items()
                  for text, phones in zip(jobs[accent], future.result())}
    for u in utts:
        if u.text:
            u.phones = lookup[(u.speaker.accent, u.text)]


def render_all(utts, noise_bank, seed, nj):
    """Render every utterance over `nj` processes; fills num_samples."""
    progress = dict(total=len(utts), desc="synthesising", unit="utt")
    if nj == 1:
        _init_worker(noise_bank, seed)
        results = [render_utterance(u) for u in tqdm(utts, **progress)]
    else:
        with Pool(nj, initializer=_init_worker, initargs=(noise_bank, seed)) as pool:
            results = list(tqdm(pool.imap_unordered(render_utterance, utts, chunksize=8), **progress))
    for index, num_samples in results:
        utts[index].num_samples = num_samples


# ---------------------------------------------------------------- orchestration

def require_tools():
    missing = [tool for tool in (audio.ESPEAK,) if shutil.which(tool) is None]
    if missing:
        raise CorpusError(f"{', '.join(missing)} not found; install it with: apt-get install -y espeak-ng sox")


def parse_extra_test(text):
    """"ks=1000,ic=600" -> {"ks": 1000, "ic": 600}."""
    counts = {}
    for item in filter(None, text.replace(" ", ",").split(",")):
        task, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise PlanError(f"--extra-test: bad entry '{item}'; use e.g. ks=1000,ic=600,sid=900,pr=200")
        counts[task] = int(number)
    return counts


def _settings(args):
    grammar_bytes = Path(args.grammar).read_bytes() if Path(args.grammar).is_file() else b""
    return {"format": FORMAT_VERSION, "minutes": args.minutes, "seed": args.seed,
            "num_speakers": args.num_speakers, "grammar_sha1": hashlib.sha1(grammar_bytes).hexdigest(),
            "out_data": str(Path(args.out_data).resolve()),
            **({"extra_test": parse_extra_test(args.extra_test)} if args.extra_test else {})}


def is_done(out_audio, out_data, settings):
    """True if a finished corpus with these settings is present; CorpusError if one with
    other settings is."""
    marker = Path(out_audio) / DONE_MARKER
    if not marker.is_file():
        return False
    previous = json.loads(marker.read_text())
    if previous != settings:
        changed = ", ".join(f"{k}: {previous.get(k)} -> {v}" for k, v in settings.items() if previous.get(k) != v)
        raise CorpusError(f"{out_audio} holds a demo corpus made with other settings ({changed}); "
                          "rerun with --force to regenerate it")
    return (Path(out_data) / "train" / "wav.scp").is_file()


def remove_previous_outputs(out_audio, out_data):
    """Only what this script writes: the named outputs under out_audio and the three data dirs."""
    (Path(out_audio) / DONE_MARKER).unlink(missing_ok=True)
    targets = [Path(out_audio) / name for name in layouts.AUDIO_OUTPUTS]
    targets += [Path(out_data) / split for split in ("train", "dev", "test")]
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def summarize(speakers, utts, elapsed):
    seconds = defaultdict(float)
    for u in utts:
        seconds[("sid test" if u.sid_only else u.partition, u.kind)] += u.num_samples / audio.TARGET_RATE
    lines = [f"{len(speakers)} speakers, {len(utts)} utterances, "
             f"{sum(seconds.values()) / 60:.1f} min of audio in {elapsed:.1f} s"]
    for partition in ("train", "dev", "test"):
        n_spk = sum(s.partition == partition for s in speakers)
        parts = ", ".join(f"{kind} {seconds[(partition, kind)] / 60:.1f}"
                          for kind in ("keyword", "silence", "command", "sentence"))
        lines.append(f"  {partition}: {n_spk} speakers; minutes: {parts}")
    if any(u.sid_only for u in utts):
        lines.append(f"  SID-only test commands (--extra-test sid=...): {seconds[('sid test', 'command')] / 60:.1f} min")
    test = [u for u in utts if u.partition == "test" and not u.sid_only]
    lines.append(f"  test sets: KS {sum(u.kind in ('keyword', 'silence') for u in test)} clips, IC "
                 f"{sum(u.kind == 'command' for u in test)} commands, SID {sum(u.sid_split == 'test' for u in utts)} "
                 f"utterances, PR {sum(u.kind == 'sentence' for u in test)} sentences")
    return "\n".join(lines)


def synthesize_corpus(args):
    """Plan, render and lay out the corpus. Returns the summary text, or None if a
    finished corpus with the same settings was already there."""
    if args.nj < 1:
        raise PlanError(f"--nj must be at least 1, got {args.nj}")
    require_tools()
    out_audio, out_data = Path(args.out_audio).resolve(), Path(args.out_data).resolve()
    settings = _settings(args)
    if not args.force and is_done(out_audio, out_data, settings):
        return None
    start = time.time()
    grammar = load_grammar(args.grammar)
    speakers, utts = plan_corpus(grammar, args.num_speakers, args.minutes, args.seed, parse_extra_test(args.extra_test))
    remove_previous_outputs(out_audio, out_data)
    wav_root = out_audio / "wav"
    for u in utts:
        u.wav_path = str(wav_root / u.speaker.name / f"{u.utt_id}.wav")
    layouts.assign_librispeech_paths(out_audio, utts)

    noise_bank = audio.make_noise_bank(NOISE_BANK_SECONDS, args.seed, BABBLE_VOICES)
    assign_phonemes(utts, args.nj)
    render_all(utts, noise_bank, args.seed, args.nj)

    layouts.write_kaldi_dirs(out_data, utts)
    layouts.write_speech_commands(out_audio, utts, noise_bank, args.seed)
    layouts.write_fluent_commands(out_audio, utts)
    layouts.write_voxceleb1(out_audio, utts, args.seed)
    layouts.write_librispeech(out_audio, utts)
    layouts.write_paths_file(out_audio, out_data)
    (out_audio / DONE_MARKER).write_text(json.dumps(settings, indent=1) + "\n")
    return summarize(speakers, utts, time.time() - start)


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        summary = synthesize_corpus(args)
    except (CorpusError, GrammarError, PlanError, audio.SynthesisError) as err:
        print(f"synth_corpus.py: error: {err}", file=sys.stderr)
        return 1
    if summary is None:
        print(f"synth_corpus.py: {args.out_audio} already holds this corpus "
              f"({DONE_MARKER} present); pass --force to regenerate")
    else:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
