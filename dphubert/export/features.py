"""Hidden-state features of a data dir as Kaldi ``feats.ark`` + ``feats.scp`` (for ESPnet, Kaldi, icefall).

One ``frames x dim`` matrix per utterance, equal to the model's output on that utterance alone (batches are
length-bucketed and padded; the encoder gives every item of a padded batch its own states). What a matrix is:

- ``Selection.single(n)``: hidden state ``n`` (0 = transformer input, N = last layer);
- ``Selection.concat([3, 6, 9])``: those states side by side (``dim = 3 x embed_dim``), in that order;
- ``Selection.from_s3prl(ckpt)``: the learned weighted sum of an s3prl downstream checkpoint's Featurizer
  (``ckpt["Featurizer"]["weights"]``, as s3prl's runner saves it): ``softmax(weights)``-weighted sum of all
  states, each first layer-normalised (no affine) when that run used ``--upstream_feature_normalize``
  (``ckpt["Args"].upstream_feature_normalize``), exactly as ``s3prl.upstream.interfaces.Featurizer`` does. The
  checkpoint must come from a run on this model through ``dphubert_local`` (same hidden states).

float32 matrices are Kaldi binary ``FM``; ``float16`` ones are kaldiio's numpy records (Kaldi has no half
matrices; kaldiio and ESPnet read them). Resumable: ``feats.scp`` is the commit log. A batch's records are
appended to the ark and flushed before their scp lines; on restart the scp's complete lines are the finished
utterances, the ark is cut back to the end of their last record, and the rest is computed. When all are done
the scp is rewritten in sorted order (as Kaldi tools expect) and ``utt2num_frames`` is written.
"""

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import kaldiio
import numpy as np
import torch
import torch.nn.functional as F
from kaldiio.matio import read_kaldi
from tqdm import tqdm

from dphubert.data import SAMPLE_RATE, AudioError, c_sorted, compute_num_samples, load_data_dir, read_audio
from dphubert.models import Wav2Vec2Model

from .graph import ExportError, check_layers

CONFIG_NAME = "extract_config.json"


@dataclass
class Selection:
    """Which hidden states make the feature matrix, and how they are combined."""

    layers: List[int]
    mode: str  # "concat" or "weighted"
    weights: Optional[torch.Tensor] = None  # raw s3prl Featurizer weights (softmax applied here)
    normalize: bool = False
    source: str = ""

    @classmethod
    def single(cls, layer: int) -> "Selection":
        return cls([int(layer)], "concat")

    @classmethod
    def concat(cls, layers: Sequence[int]) -> "Selection":
        return cls([int(v) for v in layers], "concat")

    @classmethod
    def from_s3prl(cls, path: str, trust_checkpoint: bool = False) -> "Selection":
        weights, normalize = read_featurizer_weights(path, trust_checkpoint)
        return cls(list(range(len(weights))), "weighted", weights, normalize, str(path))

    def check(self, model: Wav2Vec2Model, source: str) -> None:
        if self.mode == "weighted":
            count = model.num_layers + 1
            if len(self.layers) != count:
                raise ExportError(f"--weights {self.source}: the Featurizer has {len(self.layers)} layer weights "
                                  f"but {source} has {count} hidden states; use the downstream checkpoint of a "
                                  f"run on this model (s3prl -u dphubert_local -k {source})")
        else:
            check_layers(model, self.layers, source)

    def describe(self) -> Dict:
        if self.mode == "weighted":
            return {"weights": self.source, "softmax_weights": F.softmax(self.weights, -1).tolist(),
                    "normalize": self.normalize}
        return {"layers": self.layers}

    def combine(self, states: List[torch.Tensor]) -> torch.Tensor:
        """``states``: all hidden states ``(batch, frames, dim)``; returns ``(batch, frames, out_dim)``."""
        if self.mode == "concat":
            return torch.cat([states[i] for i in self.layers], dim=-1)
        stacked = torch.stack(states, dim=0)
        if self.normalize:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        norm_weights = F.softmax(self.weights.to(stacked), dim=-1)
        return (norm_weights[:, None, None, None] * stacked).sum(0)


def read_featurizer_weights(path: str, trust_checkpoint: bool = False) -> Tuple[torch.Tensor, bool]:
    """The Featurizer weights (and its normalize flag) of an s3prl downstream checkpoint (``states-*.ckpt``)."""
    if not Path(path).is_file():
        raise ExportError(f"--weights {path}: no such file (an s3prl downstream checkpoint, e.g. "
                          f"<expdir>/dev-best.ckpt or states-<step>.ckpt)")
    try:
        # s3prl's runner stores its argparse.Namespace under "Args"; allow exactly that class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = "; if you trust the file, pass --trust-checkpoint" if "GLOBAL" in str(e) else ""
        raise ExportError(f"--weights {path}: cannot read it as an s3prl checkpoint ({first[:200]}){hint}") from None
    featurizer = ckpt.get("Featurizer") if isinstance(ckpt, dict) else None
    if not isinstance(featurizer, dict) or "weights" not in featurizer:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ExportError(f"--weights {path}: no Featurizer weights (ckpt['Featurizer']['weights'] missing; "
                          f"keys {keys}); a run with a fixed layer (-l N) has none: use --layer N instead")
    weights = featurizer["weights"].detach().float().reshape(-1)
    args = ckpt.get("Args")
    normalize = bool(getattr(args, "upstream_feature_normalize", False))
    return weights, normalize


def min_samples(model: Wav2Vec2Model) -> int:
    """The fewest samples that give one frame (the CNN's receptive field: 400 for wav2vec 2.0 / HuBERT)."""
    field = 1
    for _, kernel, stride in reversed(model.config["extractor_conv_layer_config"]):
        field = (field - 1) * stride + kernel
    return field


def length_buckets(lengths: Dict[str, int], max_batch_samples: int) -> List[List[str]]:
    """Utterances sorted longest first, packed so that ``items x longest`` stays under ``max_batch_samples``."""
    batches: List[List[str]] = []
    current: List[str] = []
    for utt in sorted(lengths, key=lambda u: (-lengths[u], u)):
        if current and (len(current) + 1) * lengths[current[0]] > max_batch_samples:
            batches.append(current)
            current = []
        current.append(utt)
    if current:
        batches.append(current)
    return batches


# ----- the output dir: config, resume, commit ----------------------------------------------------------------
def _check_config(out_dir: Path, config: Dict) -> None:
    path = out_dir / CONFIG_NAME
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != config:
            changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
            raise ExportError(f"{out_dir}: holds features of another setting (differs in {changed}); use a new "
                              f"--out or delete {out_dir}")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, path)


def _record_end(ark: Path, offset: int) -> int:
    with open(ark, "rb") as f:
        f.seek(offset)
        read_kaldi(f)
        return f.tell()


def recover(out_dir: Path) -> Dict[str, int]:
    """Finished utterances ``{utt: ark offset}`` from ``feats.scp``; cuts both files back to them."""
    scp, ark = out_dir / "feats.scp", out_dir / "feats.ark"
    done: Dict[str, int] = {}
    if scp.is_file():
        raw = scp.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with open(scp, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode("utf-8").splitlines():
            utt, where = line.split(maxsplit=1)
            done[utt] = int(where.rsplit(":", 1)[1])
    end = 0
    if done:
        if not ark.is_file():
            raise ExportError(f"{scp} lists {len(done)} utterances but {ark} is missing; delete {out_dir} "
                              f"and start again")
        end = _record_end(ark, max(done.values()))  # the scp may be sorted: the last record has the top offset
    if ark.is_file() and ark.stat().st_size != end:
        with open(ark, "r+b") as f:
            f.truncate(end)
    return done


def _finish(out_dir: Path, utt_ids: List[str]) -> None:
    """Sorted feats.scp and utt2num_frames, each written atomically."""
    scp = out_dir / "feats.scp"
    entries = dict(line.split(maxsplit=1) for line in scp.read_text(encoding="utf-8").splitlines())
    frames = {utt: kaldiio.load_mat(entries[utt]).shape[0] for utt in utt_ids}
    for name, lines in (("feats.scp", [f"{u} {entries[u]}" for u in c_sorted(entries)]),
                        ("utt2num_frames", [f"{u} {frames[u]}" for u in c_sorted(frames)])):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, out_dir / name)


# ----- extraction ------------------------------------------------------------------------------------------
def extract_features(model: Wav2Vec2Model, data: str, out_dir: str, selection: Selection,
                     dtype: str = "float32", batch_seconds: float = 100.0, resample: bool = False,
                     downmix: bool = False, nj: int = 4, device: str = "cpu", model_source: str = "model",
                     progress: bool = True) -> Dict[str, int]:
    """Write ``out_dir/feats.{ark,scp}`` for every utterance of the data dir ``data``; returns counts."""
    if dtype not in ("float32", "float16"):
        raise ExportError(f"--dtype {dtype}: choose float32 or float16")
    if model.gates():
        raise ExportError(f"{model_source}: the model still has pruning gates; prune it first: "
                          f"python -m dphubert.bin.prune --ckpt {model_source} --out pruned.pt")
    selection.check(model, model_source)
    data_dir = load_data_dir(data)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out {out}: cannot create it ({e.strerror or e}); choose a writable directory") from None
    config = {"model": str(Path(model_source).resolve()), "data": str(Path(data).resolve()), "dtype": dtype,
              "resample": resample, "downmix": downmix, **selection.describe()}
    _check_config(out, config)
    done = recover(out)

    todo = [utt for utt in data_dir.utt_ids if utt not in done]
    lengths = {utt: data_dir.utt2num_samples[utt] for utt in todo if utt in data_dir.utt2num_samples}
    unknown = [utt for utt in todo if utt not in lengths]
    if unknown:
        counted, bad = compute_num_samples(data_dir, unknown, nj=nj, resample=resample, downmix=downmix,
                                           progress=progress)
        if bad:
            raise AudioError(f"{data}: {len(bad)} utterance(s) with bad audio (see stage 1: python -m "
                             f"dphubert.bin.prepare_data --data {data}); first: {bad[0][1]}")
        lengths.update(counted)
    shortest = min_samples(model)
    too_short = sorted(utt for utt, n in lengths.items() if n < shortest)
    if too_short:
        raise AudioError(f"{data}: {len(too_short)} utterance(s) shorter than the model's {shortest} samples for one "
                         f"frame (first: {too_short[0]}, {lengths[too_short[0]]} samples); remove them from the data "
                         f"dir (utils/subset_data_dir.sh or utils/filter_scp.pl, then utils/fix_data_dir.sh)")
    batches = length_buckets(lengths, int(batch_seconds * SAMPLE_RATE))

    model = model.to(device).eval()
    ark_path = out / "feats.ark"
    written = 0
    with open(ark_path, "ab") as ark, open(out / "feats.scp", "a", encoding="utf-8") as scp, \
            tqdm(total=len(data_dir.utt_ids), initial=len(done), desc=f"features of {data}", unit="utt",
                 disable=not progress, mininterval=2.0) as bar, torch.inference_mode():
        for batch in batches:
            waves = [torch.from_numpy(read_audio(data_dir, utt, resample=resample, downmix=downmix)) for utt in batch]
            sizes = torch.tensor([len(w) for w in waves])
            padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device)
            states, frames = model.extract_features(padded, sizes.to(device))
            if frames is None:
                frames = model.output_lengths(sizes)
            features = selection.combine(states).float().cpu()
            lines = []
            for i, utt in enumerate(batch):
                matrix = features[i, : int(frames[i])].numpy()
                key = utt.encode("utf-8") + b" "
                offset = ark.tell() + len(key)
                if dtype == "float16":
                    kaldiio.save_ark(ark, {utt: matrix.astype(np.float16)}, write_function="numpy")
                else:
                    kaldiio.save_ark(ark, {utt: np.ascontiguousarray(matrix)})
                lines.append(f"{utt} {ark_path.resolve()}:{offset}\n")
            ark.flush()
            os.fsync(ark.fileno())
            scp.write("".join(lines))  # the commit: only now are these utterances done
            scp.flush()
            os.fsync(scp.fileno())
            written += len(batch)
            bar.update(len(batch))
    _finish(out, data_dir.utt_ids)
    return {"utterances": len(data_dir.utt_ids), "computed": written, "resumed": len(done)}
