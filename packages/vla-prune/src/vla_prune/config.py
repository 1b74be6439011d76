"""Configuration of the LightVLA pruner: a frozen dataclass validated where it is built.

Defaults reproduce LightVLA's eval/train semantics (`prismatic/extern/hf/modeling_prismatic.py`,
TokenPruner) except `mask_task_padding`, which is on by default because attending padded task
tokens collapsed the only public pi0.5 port.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BudgetScope = Literal["pooled", "per_camera"]
_SCOPES = ("pooled", "per_camera")


@dataclass(frozen=True)
class PrunerConfig:
    """How many image tokens survive and which inputs the scorer may look at.

    Selection (eval) is LightVLA's union of per-query argmaxes unless a budget is set:
      - `keep_tokens` / `keep_ratio`: keep exactly that many tokens (capped by the valid count),
        ranked by vote count, ties broken by the column's best score, then by lower index.
        `keep_ratio` becomes `ceil(keep_ratio * group_size)` tokens.
      - `budget_scope`: "pooled" applies the budget (and `min_keep`) to all N tokens at once;
        "per_camera" splits N into `num_cameras` equal groups and applies it to each group.
        Scoring itself always pools all cameras (a query may pick a patch of any camera).
      - `min_keep`: in union mode, top the union up to this many tokens (per scope group) with
        the best-ranked unvoted tokens, so a collapsed union never leaves fewer than `min_keep`.
    Shapes:
      - `pad_to_multiple`: round the eval kept length K up to a multiple (capped at N) so that
        compiled graphs / CUDA graphs see few distinct shapes.
    Scoring:
      - `mask_task_padding`: padded task tokens get no attention weight in the query SDPA
        (the reference attends them).
      - `fp32_scores`: compute queries and scores in fp32 even for bf16 inputs. The reference
        scores in the input dtype; in bf16 a score of |29| has a resolution of 0.125, coarser
        than the top-1/top-2 gaps (~0.04) measured in the pi0.5 port, so argmax ties resolve to
        the lowest index.
    """

    mask_task_padding: bool = True
    keep_tokens: int | None = None
    keep_ratio: float | None = None
    budget_scope: BudgetScope = "pooled"
    num_cameras: int = 1
    min_keep: int = 0
    pad_to_multiple: int = 1
    fp32_scores: bool = False

    def __post_init__(self) -> None:
        if self.keep_tokens is not None and self.keep_ratio is not None:
            raise ValueError(
                "PrunerConfig: set at most one of keep_tokens and keep_ratio, "
                f"got keep_tokens={self.keep_tokens}, keep_ratio={self.keep_ratio}"
            )
        if self.keep_tokens is not None and self.keep_tokens < 1:
            raise ValueError(f"PrunerConfig.keep_tokens must be >= 1, got {self.keep_tokens}")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"PrunerConfig.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.budget_scope not in _SCOPES:
            raise ValueError(
                f"PrunerConfig.budget_scope must be one of {_SCOPES}, got {self.budget_scope!r}"
            )
        if self.num_cameras < 1:
            raise ValueError(f"PrunerConfig.num_cameras must be >= 1, got {self.num_cameras}")
        if self.min_keep < 0:
            raise ValueError(f"PrunerConfig.min_keep must be >= 0, got {self.min_keep}")
        if self.min_keep > 0 and self.has_budget:
            raise ValueError(
                "PrunerConfig.min_keep only applies to the adaptive union; with keep_tokens / "
                f"keep_ratio the count is fixed (got min_keep={self.min_keep})"
            )
        if self.pad_to_multiple < 1:
            raise ValueError(
                f"PrunerConfig.pad_to_multiple must be >= 1, got {self.pad_to_multiple}"
            )

    @property
    def has_budget(self) -> bool:
        return self.keep_tokens is not None or self.keep_ratio is not None

    def budget_for(self, group_size: int) -> int | None:
        """Tokens to keep in one scope group of `group_size` candidates (None = adaptive union)."""
        if self.keep_tokens is not None:
            return min(self.keep_tokens, group_size)
        if self.keep_ratio is not None:
            return min(math.ceil(self.keep_ratio * group_size), group_size)
        return None
