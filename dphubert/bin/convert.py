"""Convert a pretrained HuBERT / WavLM / wav2vec 2.0 checkpoint into our model file (the distillation teacher).

Usage::

    python -m dphubert.bin.convert --from hf exp/hf/hubert-base-ls960 --out exp/teacher.pt
    python -m dphubert.bin.convert --from fairseq hubert_base_ls960.pt --out exp/teacher.pt --trust-checkpoint
    python -m dphubert.bin.convert --from torchaudio hubert_base_sd.pt --out exp/teacher.pt --num-heads 12
    python -m dphubert.bin.convert --from dphubert DPHuBERT-sp0.75.pth --out exp/student.pt
    python -m dphubert.bin.convert --from dphubert exp/<tag>/final/model.pt --to release --out DPHuBERT-ours.pth

Sources:
  hf          a Hugging Face ``save_pretrained`` directory (HubertModel, WavLMModel, Wav2Vec2Model and their
              *ForCTC / *ForPreTraining variants); nothing is downloaded.
  fairseq     a fairseq HuBERT / wav2vec 2.0 checkpoint or an original WavLM (unilm) checkpoint; fairseq itself
              is not needed. Files whose config holds Python objects (argparse.Namespace, OmegaConf) need
              --trust-checkpoint.
  torchaudio  ``torch.save(model.state_dict())`` of a torchaudio Wav2Vec2Model (hubert_base, wavlm_base, ...);
              the config is inferred from shapes; heads with --num-heads (default dim/64, WavLM: inferred),
              anything else with --config.
  dphubert    our files and the released DPHuBERT / DPWavLM files (checked and re-saved, with their
              distill_linear_projs).

Targets (--to):
  dphubert    our model file (default).
  release     the released DPHuBERT schema {"state_dict", "config", "distill_linear_projs"}: the reference
              code's key names (feature_extractor.dummy_weight holds our last-layer input scale, all ones when
              there is none) and only the config keys its wav2vec2_model accepts, so that projects which load
              DPHuBERT-sp0.75.pth with wav2vec2_model(**ckpt["config"]) + load_state_dict(strict=False) load it.

Both outputs load with ``dphubert.models.load_model`` and ``torch.load(weights_only=True)``. Assumptions the
importer makes are printed as ``note:`` lines; the last line summarises the model. Errors print one line
``error: ...`` and exit 1 (bad command-line options exit 2).
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from dphubert.convert import KINDS, CheckpointError, ConvertError, convert, read_dphubert, summary
from dphubert.models import atomic_save, save_model
from dphubert.models.release import release_checkpoint

TARGETS = ("dphubert", "release")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="kind", required=True, choices=KINDS, help="kind of the source")
    parser.add_argument("src", help="source file (directory for --from hf)")
    parser.add_argument("--out", required=True, help="model file to write (e.g. exp/teacher.pt)")
    parser.add_argument("--to", default="dphubert", metavar="{dphubert,release}",
                        help="layout of --out: dphubert (our model file) or release (the released DPHuBERT schema, "
                             "for code that loads DPHuBERT-sp0.75.pth) (default: %(default)s)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickles that need arbitrary code to load (only for files from trusted sources)")
    parser.add_argument("--normalize-waveform", choices=("auto", "true", "false"), default="auto",
                        help="normalise each waveform to zero mean and unit variance inside the model; auto: what "
                             "the source says or implies (default: %(default)s)")
    parser.add_argument("--num-heads", type=int, help="attention heads per layer (--from torchaudio, non-WavLM)")
    parser.add_argument("--config", help="JSON/YAML file of our config keys that replace inferred values "
                                         "(--from torchaudio)")
    return parser


def _read_overrides(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if path is None:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConvertError(f"{path}: cannot read the --config file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: --config must hold a mapping of config keys, e.g. "
                           f"{json.dumps({'encoder_num_heads': 12})}")
    return data


def run(args) -> str:
    options: Dict[str, Any] = {}
    if args.kind == "torchaudio":
        options = dict(config=_read_overrides(args.config), num_heads=args.num_heads)
    normalize = {"auto": None, "true": True, "false": False}[args.normalize_waveform]
    extra: Dict[str, Any] = {}
    if args.kind == "dphubert":
        model, extra = read_dphubert(args.src, args.trust_checkpoint, normalize)
    else:
        model = convert(args.kind, args.src, trust_checkpoint=args.trust_checkpoint, normalize_waveform=normalize,
                        **options)
    try:
        if args.to == "release":
            atomic_save(release_checkpoint(model, extra.get("distill_linear_projs"), source=str(args.src)), args.out)
        else:
            save_model(model, args.out, {**extra, "converted_from": {"kind": args.kind, "source": str(args.src)}})
    except OSError as e:
        raise ConvertError(f"{args.out}: cannot write it ({e.strerror or e}); choose another --out") from None
    layout = " in the release layout" if args.to == "release" else ""
    line = f"wrote {args.out}{layout} from {args.kind} {args.src}: {summary(model)}"
    print(line)
    return line


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.kind != "torchaudio" and (args.num_heads is not None or args.config is not None):
        parser.error("--num-heads and --config only apply to --from torchaudio")
    if args.to not in TARGETS:
        print(f"error: --to {args.to}: choose dphubert (our model file) or release (the released DPHuBERT schema)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="note: %(message)s", stream=sys.stdout)
    try:
        run(args)
    except (CheckpointError, ConvertError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
