"""Text data for calibration and evaluation: token windows from text files that ship offline."""
from .text import (
    default_calibration_text,
    default_evaluation_text,
    load_tokenizer,
    sentences,
    text_source,
    to_npz,
    token_windows,
)

__all__ = ["default_calibration_text", "default_evaluation_text", "load_tokenizer", "sentences", "text_source",
           "to_npz", "token_windows"]
