"""What a validation run checks against, decoupled from where the values come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.validation.lines import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    from shared.config import Settings

# Phi-3's chat-template control tokens (the default base model). A fine-tune of a model with
# another template should list that template's tokens instead.
PHI3_RESERVED_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class ValidationOptions:
    """Limits and switches for one validation run.

    ``keep_examples`` keeps the first N error-free conversations on the report (for the
    CLI's ``--show``); it stays 0 in the Function, where nobody would read them.
    """

    max_seq_length: int = 4096
    tokenizer: str | None = None
    min_examples_warning: int = 50
    epochs: int = 3
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    samples_per_code: int = 5
    keep_examples: int = 0
    reserved_tokens: tuple[str, ...] = PHI3_RESERVED_TOKENS

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "epochs", "max_line_bytes", "samples_per_code"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_examples_warning < 0 or self.keep_examples < 0:
            raise ValueError("min_examples_warning and keep_examples cannot be negative")
        if not all(token.startswith("<|") for token in self.reserved_tokens):
            # The per-line fast path only looks further when it sees "<|" (or its JSON escape).
            raise ValueError("reserved tokens must start with '<|'")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> ValidationOptions:
        """The options the app's settings ask for; ``overrides`` replace single fields."""
        values: dict[str, object] = {
            "max_seq_length": settings.max_seq_length,
            "tokenizer": settings.tokenizer,
            "min_examples_warning": settings.min_examples_warning,
            "epochs": settings.epochs,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
