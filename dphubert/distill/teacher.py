"""Teacher targets for distillation: computed online, or read from a dump of teacher hidden states.

Dump layout (``dump_teacher_features``; CLI ``python -m dphubert.bin.dump_teacher``)::

    <out>/feats.ark    float16 matrices (frames x dim) of every (utterance, layer), kaldiio "NPY" records
    <out>/feats.scp    "<utt>-L<layer> feats.ark:<offset>" lines, one per matrix (read with kaldiio.load_scp)
    <out>/meta.yaml    layers, layer0 (what state 0 is), dim, frame_stride, dtype, key format and the teacher
    <out>/skipped.txt  utterances with bad audio (only with skip_bad_audio)

Each utterance is run whole (no cropping, no padding). The dump is resumable: utterances whose every layer is
in ``feats.scp`` are skipped and new records are appended. The ark is written first and the scp lines of an
utterance only afterwards, so a kill leaves at worst unreferenced bytes at the end of the ark.
float16 matrices are stored as kaldiio "NPY" records: kaldiio reads them, Kaldi binaries do not.

Alignment with cropped batches: the crop offset of an item (samples, a multiple of ``frame_stride``) gives the
first frame ``offset // frame_stride``; the student's frame count gives the number of frames. The teacher saw the
whole utterance, so dumped targets of a cropped item differ from online targets of the crop (more context);
for an uncropped item they are the same up to float16 rounding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

import kaldiio
import numpy as np
import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from dphubert.data import AudioError, load_data_dir, read_audio
from dphubert.models import Wav2Vec2Model
from dphubert.user_options import fix_option

from .errors import DistillError, TeacherMismatchError

logger = logging.getLogger(__name__)

META_VERSION = 1


def frame_stride(model: Wav2Vec2Model) -> int:
    """Samples per output frame (product of the CNN strides: 320 for the released models)."""
    stride = 1
    for _, _, s in model.config["extractor_conv_layer_config"]:
        stride *= s
    return stride


def feature_key(utt_id: str, layer: int) -> str:
    return f"{utt_id}-L{layer}"


def frozen(model: Wav2Vec2Model) -> Wav2Vec2Model:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class OnlineTeacher:
    """Runs the frozen teacher on the (cropped) batch itself; ``layer0`` as in ``Wav2Vec2Model.extract_features``.

    ``precision="amp"``: fp32 weights, under whatever autocast the caller has (the student's ``amp``).
    ``"bf16"``: weights stored in bf16 (no per-step weight casts, half the memory traffic), the forward under its
    own bf16 autocast and ``inference_mode``; the targets come back as normal (not inference) tensors.
    """

    def __init__(self, model: Wav2Vec2Model, layers: Sequence[int], layer0: str = "transformer_input",
                 precision: str = "amp"):
        if precision not in ("amp", "bf16"):
            raise ValueError(f"teacher precision must be amp or bf16, got {precision!r}")
        self.model = frozen(model)
        self.layers = list(layers)
        self.layer0 = layer0
        self.precision = precision

    def to(self, device) -> "OnlineTeacher":
        self.model.to(device, torch.bfloat16 if self.precision == "bf16" else None)
        return self

    def __call__(self, batch: dict, waveforms: Tensor, num_frames: int) -> List[Tensor]:
        self.model.eval()
        if self.precision == "bf16":
            with torch.inference_mode(), torch.autocast(waveforms.device.type, dtype=torch.bfloat16):
                states = self._states(waveforms, num_frames)
            # Inference tensors cannot be saved for the student's backward: a clone outside inference_mode is normal.
            return [state.clone() for state in states]
        with torch.no_grad():
            return self._states(waveforms, num_frames)

    def _states(self, waveforms: Tensor, num_frames: int) -> List[Tensor]:
        states, _ = self.model.extract_features(waveforms, layer0=self.layer0)
        if states[0].size(1) != num_frames:
            raise TeacherMismatchError(f"teacher hidden states {tuple(states[0].shape)} vs student frames "
                                       f"{num_frames}: the teacher and student CNNs differ in kernels or strides")
        return [states[layer] for layer in self.layers]


class TeacherFeatureReader:
    """Reads a dump made by ``dump_teacher_features``; ``read(utt, layer)`` -> float16 ``(frames, dim)``."""

    def __init__(self, dump_dir: str | Path):
        self.dir = Path(dump_dir)
        meta_path, scp = self.dir / "meta.yaml", self.dir / "feats.scp"
        if not meta_path.is_file() or not scp.is_file():
            raise DistillError(f"{self.dir}: not a teacher feature dump (needs meta.yaml and feats.scp); "
                               f"make one with python -m dphubert.bin.dump_teacher")
        self.meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
        self.layers = list(self.meta["layers"])
        self.layer0 = self.meta.get("layer0", "transformer_input")  # dumps made before the option: that one
        self.dim = int(self.meta["dim"])
        self.frame_stride = int(self.meta["frame_stride"])
        self.index = kaldiio.load_scp(str(scp), max_cache_fd=4)

    def has(self, utt_id: str) -> bool:
        return all(feature_key(utt_id, layer) in self.index for layer in self.layers)

    def read(self, utt_id: str, layer: int) -> np.ndarray:
        key = feature_key(utt_id, layer)
        if key not in self.index:
            raise TeacherMismatchError(f"{self.dir}: no dumped features for utterance {utt_id} layer {layer} "
                                       f"(key {key}); re-run dump_teacher on this data dir")
        return self.index[key]

    def check_compatible(self, layers: Sequence[int], dim: int, stride: int, utt_ids: Sequence[str],
                         layer0: str = "transformer_input") -> None:
        """Raise TeacherMismatchError if the dump cannot serve ``layers`` of a ``dim``-wide teacher for ``utt_ids``."""
        missing_layers = [x for x in layers if x not in self.layers]
        if missing_layers:
            raise TeacherMismatchError(f"{self.dir}: dumped layers {self.layers} lack {missing_layers} needed for "
                                       f"distillation; dump with --layers {','.join(map(str, layers))}")
        if 0 in layers and self.layer0 != layer0:
            raise TeacherMismatchError(f"{self.dir}: dumped layer 0 is {self.layer0} (meta.yaml) but training uses "
                                       f"layer0={layer0}; dump again with python -m dphubert.bin.dump_teacher "
                                       f"--layer0 {layer0} --out <new dir>, or use the online teacher (no "
                                       f"--teacher-feats; in a recipe: --dump_teacher false)")
        if self.dim != dim or self.frame_stride != stride:
            raise TeacherMismatchError(f"{self.dir}: dumped features are (frames, {self.dim}) at stride "
                                       f"{self.frame_stride} but the teacher gives (frames, {dim}) at stride {stride}")
        missing = [u for u in utt_ids if not self.has(u)]
        if missing:
            raise TeacherMismatchError(f"{self.dir}: {len(missing)} training utterance(s) have no dumped features, "
                                       f"first {missing[0]}; finish or re-run dump_teacher on the same data dir")


class DumpedTeacher:
    """Targets read from a dump; each item's crop offset selects its frames."""

    def __init__(self, reader: TeacherFeatureReader, layers: Sequence[int], device="cpu"):
        self.reader = reader
        self.layers = list(layers)
        self.device = torch.device(device)

    def to(self, device) -> "DumpedTeacher":
        self.device = torch.device(device)
        return self

    def __call__(self, batch: dict, waveforms: Tensor, num_frames: int) -> List[Tensor]:
        stride = self.reader.frame_stride
        per_layer: Dict[int, List[np.ndarray]] = {layer: [] for layer in self.layers}
        for utt_id, offset in zip(batch["utt_ids"], batch["offsets"].tolist()):
            if offset % stride:
                raise TeacherMismatchError(f"crop offset {offset} of {utt_id} is not a multiple of the frame "
                                           f"stride {stride}; crop with CropCollator(crop_multiple={stride})")
            first = offset // stride
            for layer in self.layers:
                matrix = self.reader.read(utt_id, layer)
                if matrix.ndim != 2 or matrix.shape[1] != self.reader.dim or matrix.shape[0] < first + num_frames:
                    raise TeacherMismatchError(
                        f"{self.reader.dir}: dumped features of {utt_id} layer {layer} have shape "
                        f"{tuple(matrix.shape)} but the student needs frames {first}..{first + num_frames} of "
                        f"(>= {first + num_frames}, {self.reader.dim}); the dump was made from other audio")
                per_layer[layer].append(matrix[first:first + num_frames])
        return [torch.from_numpy(np.stack(per_layer[layer])).to(self.device, torch.float32)
                for layer in self.layers]


# ----- dumping ------------------------------------------------------------------------------------------------
def _complete_entries(scp: Path, layers: Sequence[int]) -> Dict[str, List[str]]:
    """Lines of ``scp`` grouped by utterance, keeping only utterances with every layer (drops a torn last line)."""
    if not scp.is_file():
        return {}
    text = scp.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a line cut by a kill
    suffixes = {f"-L{layer}": layer for layer in layers}
    by_utt: Dict[str, Dict[int, str]] = {}
    for line in lines:
        if not line.strip():
            continue
        key = line.split(maxsplit=1)[0]
        utt_id, _, layer = key.rpartition("-L")
        if f"-L{layer}" in suffixes:
            by_utt.setdefault(utt_id, {})[int(layer)] = line
    return {utt: [lines_[x] for x in layers] for utt, lines_ in by_utt.items() if all(x in lines_ for x in layers)}


def dump_teacher_features(teacher: Wav2Vec2Model, data_dir: str | Path, layers: Sequence[int], out_dir: str | Path,
                          teacher_path: str = "", device="cpu", skip_bad_audio: bool = False,
                          resample: bool = False, downmix: bool = False, progress: bool = True,
                          layer0: str = "transformer_input") -> Dict[str, int]:
    """Dump hidden states ``layers`` of ``teacher`` for every utterance of ``data_dir`` (see module docstring).

    ``layer0``: what state 0 is (``Wav2Vec2Model.extract_features``); recorded in meta.yaml.

    Returns counts ``{"written", "skipped_done", "bad"}``.
    """
    teacher = frozen(teacher).to(device)
    out_dir = Path(out_dir).resolve()  # the scp refers to the ark by absolute path: readable from any cwd
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = sorted(set(layers))
    if not layers or min(layers) < 0 or max(layers) > teacher.num_layers:
        raise DistillError(f"--layers {layers} must lie in 0..{teacher.num_layers} (the teacher's layers)")
    meta = {"version": META_VERSION, "layers": layers, "dim": teacher.config["encoder_embed_dim"],
            "frame_stride": frame_stride(teacher), "dtype": "float16", "key_format": "<utt>-L<layer>",
            "layer0": layer0,
            "teacher": str(teacher_path), "teacher_num_params": teacher.num_params(), "data": str(data_dir)}
    meta_path = out_dir / "meta.yaml"
    if meta_path.is_file():
        old = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
        old.setdefault("layer0", "transformer_input")  # dumps made before the option
        for key in ("layers", "layer0", "dim", "frame_stride", "teacher_num_params"):
            if old.get(key) != meta[key]:
                raise DistillError(f"{out_dir}: an existing dump has {key}={old.get(key)} but this run has "
                                   f"{key}={meta[key]}; use another --out or delete {out_dir}")
    else:
        meta_path.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")

    data = load_data_dir(data_dir)
    scp_path, ark_path = out_dir / "feats.scp", out_dir / "feats.ark"
    done = _complete_entries(scp_path, layers)
    # Rewrite the scp with complete utterances only (drops a torn line or a half-listed utterance).
    tmp = scp_path.with_name(".feats.scp.tmp")
    tmp.write_text("".join(line + "\n" for utt in done for line in done[utt]), encoding="utf-8")
    os.replace(tmp, scp_path)
    todo = [utt for utt in data.utt_ids if utt not in done]
    bad = []
    written = 0
    with open(ark_path, "ab") as ark, open(scp_path, "a", encoding="utf-8") as scp:
        for utt_id in tqdm(todo, desc=f"dumping teacher layers {layers}", unit="utt", disable=not progress):
            try:
                waveform = read_audio(data, utt_id, resample=resample, downmix=downmix)
            except AudioError as e:
                if not skip_bad_audio:
                    raise
                bad.append((utt_id, str(e)))
                continue
            wav = torch.from_numpy(waveform)[None].to(device)
            with torch.no_grad():
                states, _ = teacher.extract_features(wav, layer0=layer0)
            if states[0].size(1) == 0:
                error = f"utt {utt_id}: {data.source_of(utt_id)} is too short for the teacher ({wav.size(1)} samples)"
                if not skip_bad_audio:
                    raise AudioError(f"{error}; remove it or pass {fix_option('skip_bad_audio')}")
                bad.append((utt_id, error))
                continue
            matrices = {feature_key(utt_id, layer): states[layer][0].cpu().numpy().astype(np.float16)
                        for layer in layers}
            lines = []
            for key, matrix in matrices.items():
                scp_buffer = _LineBuffer()
                kaldiio.save_ark(ark, {key: matrix}, scp=scp_buffer, write_function="numpy")
                lines.append(scp_buffer.text)
            ark.flush()
            os.fsync(ark.fileno())
            scp.write("".join(lines))
            scp.flush()
            written += 1
    if bad:
        with open(out_dir / "skipped.txt", "a", encoding="utf-8") as f:
            for utt_id, reason in bad:
                f.write(f"{utt_id} {reason}\n")
        logger.warning("%s: skipped %d utterance(s) with bad audio (see %s)", data.path, len(bad),
                       out_dir / "skipped.txt")
    return {"written": written, "skipped_done": len(done), "bad": len(bad)}


class _LineBuffer:
    """A text sink for kaldiio's scp output, so that scp lines are written only after the ark data is safe."""

    def __init__(self):
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s
