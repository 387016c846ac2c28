"""imagelm: image generation with language models (LlamaGen- and ELM-style), in one small codebase."""
__version__ = "0.1.0"

from imagelm.api import decode_tokens, linked_tokenizer, load, sample  # noqa: E402
from imagelm.edits import edit, expand, sample_canvas  # noqa: E402

__all__ = ["load", "sample", "decode_tokens", "linked_tokenizer", "edit", "expand", "sample_canvas", "__version__"]
