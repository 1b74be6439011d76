"""Prompt tokenizers: a tiny character tokenizer built offline, or a real one from a local path.

Nothing is downloaded: `TinyTokenizer` is constructed by code (printable ASCII + newline, ids
small enough for the tiny test backbones' 128-token vocabulary), and `load_tokenizer(path)` only
reads a local SentencePiece model file or a local Hugging Face tokenizer folder.
Prompt text follows openpi: pi0 = the task + newline; pi0.5 = `"Task: …, State: …;\\nAction: "`
with the normalised state discretised into 256 bins (openpi `tokenizer.py`, PaligemmaTokenizer).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PromptTokenizer",
    "TinyTokenizer",
    "TokenizedPrompt",
    "load_tokenizer",
    "pi0_prompt",
    "pi05_prompt",
    "tokenize_prompts",
]


class PromptTokenizer(Protocol):
    """What the data pipeline needs: text -> ids (no special tokens), a BOS id and a vocab size."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class TinyTokenizer:
    """Character-level: 0 = pad, 1 = BOS, 2 = unknown, then newline and printable ASCII.

    Deterministic and built by code, so tests and the embedded default need no files."""

    pad_id: int = 0
    bos_id: int = 1
    unk_id: int = 2

    @property
    def alphabet(self) -> str:
        return "\n" + "".join(c for c in string.printable if c.isprintable())

    @property
    def vocab_size(self) -> int:
        return 3 + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        table = {c: 3 + i for i, c in enumerate(self.alphabet)}
        return [table.get(c, self.unk_id) for c in text]

    def decode(self, ids: list[int]) -> str:
        alphabet = self.alphabet
        return "".join(alphabet[i - 3] if 3 <= i < 3 + len(alphabet) else "" for i in ids)


class _SentencePieceTokenizer:
    def __init__(self, path: Path) -> None:
        import sentencepiece  # optional: only when a .model file is given

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))


class _HFTokenizer:
    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = len(self._tok)
        bos = self._tok.bos_token_id
        if bos is None:
            raise ValueError(f"tokenizer at {path} has no BOS token")
        self.bos_id = int(bos)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))


def load_tokenizer(path: str | Path | None) -> PromptTokenizer:
    """None -> `TinyTokenizer()`; a `.model` file -> SentencePiece; a folder -> transformers'
    `AutoTokenizer` with `local_files_only=True` (never a hub download)."""
    if path is None:
        return TinyTokenizer()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {path} does not exist (no hub downloads)")
    if path.is_file():
        if path.suffix != ".model":
            raise ValueError(f"tokenizer file {path} is not a SentencePiece .model file")
        return _SentencePieceTokenizer(path)
    return _HFTokenizer(path)


def pi0_prompt(task: str) -> str:
    """openpi pi0: the cleaned task string followed by a newline."""
    return task.strip().replace("_", " ").replace("\n", " ") + "\n"


def pi05_prompt(task: str, normalized_state: np.ndarray) -> str:
    """openpi pi0.5: state in [-1, 1] discretised into 256 bins and written as text."""
    bins = np.digitize(np.clip(normalized_state, -1.0, 1.0), np.linspace(-1, 1, 257)[:-1]) - 1
    state = " ".join(str(int(b)) for b in bins)
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {cleaned}, State: {state};\nAction: "


@dataclass(frozen=True)
class TokenizedPrompt:
    tokens: Tensor  # [B, T] long, right-padded with 0
    mask: Tensor  # [B, T] bool


def tokenize_prompts(
    tokenizer: PromptTokenizer, prompts: list[str], max_len: int
) -> TokenizedPrompt:
    """BOS + ids, truncated to `max_len`, right-padded (openpi truncates the same way)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    tokens = torch.zeros(len(prompts), max_len, dtype=torch.long)
    mask = torch.zeros(len(prompts), max_len, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)][:max_len]
        if max(ids) >= tokenizer.vocab_size:
            raise ValueError(f"token id {max(ids)} >= vocab_size {tokenizer.vocab_size}")
        tokens[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    return TokenizedPrompt(tokens, mask)
