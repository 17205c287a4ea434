"""What the command lines (``dheera-local``, ``dheera-local score``) do to their terminal."""

from __future__ import annotations


def quiet_weight_loading() -> None:
    """Silence transformers' weight-loading bar (noise on a terminal) for commands that load models.

    Not at start-up: it would import transformers for every command, and it silences huggingface_hub's
    download bar too, which ``pull`` shows.
    """
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
