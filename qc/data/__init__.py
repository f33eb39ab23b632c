"""Text data for calibration and evaluation: token windows from text files that ship offline."""
