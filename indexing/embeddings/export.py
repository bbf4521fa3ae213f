"""Building the ONNX exports `indexing.embeddings.onnx` runs (torch is needed here only).

The whole sentence-transformers module (transformer, pooling, normalisation) is traced into one
graph with torch's TorchScript-based exporter, so the pooling cannot drift from the library's.
int8: ONNX Runtime's dynamic quantization with per-channel weight scales (per-tensor scales cost
MiniLM up to 0.16 of cosine on long texts; per-channel keeps it above 0.98).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from indexing.embeddings.onnx import EXPORT_FORMAT, META_FILE, MODEL_FILE, OUTPUT, PROBE_TEXT, TOKENIZER_FILE

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_sentence_transformer(source: Path, name: str, target: Path) -> None:
    """Export the model folder `source` (loaded as `HuggingFaceEmbedding` would load `name`) into `target`."""
    import torch
    from llama_index.embeddings.huggingface.utils import (
        get_query_instruct_for_model_name,
        get_text_instruct_for_model_name,
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(source),
        device="cpu",
        local_files_only=True,
        prompts={"query": get_query_instruct_for_model_name(name), "text": get_text_instruct_for_model_name(name)},
    ).eval()
    features = model.tokenize(["a short probe", "a somewhat longer probe sentence for the tracer"])
    inputs = tuple(k for k in INPUTS if k in features)

    class Sentence(torch.nn.Module):
        """Positional tensors in, `sentence_embedding` out: what the exporter can trace."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(inputs, tensors, strict=True)))[OUTPUT]

    axes: dict[str, Any] = {k: {0: "batch", 1: "sequence"} for k in inputs} | {OUTPUT: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches fixed at trace time
        torch.onnx.export(
            Sentence(),
            tuple(features[k] for k in inputs),
            str(target / MODEL_FILE),
            input_names=list(inputs),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    tokenizer = model.tokenizer
    tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    probe = model.encode([PROBE_TEXT], prompt_name="query", normalize_embeddings=True)[0]
    if model.max_seq_length is None:
        raise ValueError(f"{name} declares no maximum sequence length; cannot export it faithfully")
    _write_meta(
        target,
        {
            "backend": "onnx",
            "max_length": model.max_seq_length,
            "dimension": len(probe),
            "inputs": list(inputs),
            "query_prefix": (model.prompts or {}).get("query") or "",
            "text_prefix": (model.prompts or {}).get("text") or "",
            "lowercase": bool(getattr(model[0], "do_lower_case", False)),
            "pad_id": tokenizer.pad_token_id or 0,
            "pad_token": str(tokenizer.pad_token),
            "probe_vector": [float(x) for x in probe],
        },
    )


def quantize_int8(fp32: Path, target: Path) -> None:
    """Dynamic int8 quantization of the fp32 export in `fp32` into `target` (same tokenizer and probe)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32 / MODEL_FILE, target / MODEL_FILE, per_channel=True, weight_type=QuantType.QInt8)
    shutil.copyfile(fp32 / TOKENIZER_FILE, target / TOKENIZER_FILE)
    meta = json.loads((fp32 / META_FILE).read_text(encoding="utf-8"))
    _write_meta(target, meta | {"backend": "onnx-int8"})


def _write_meta(target: Path, meta: dict[str, Any]) -> None:
    meta = meta | {"format": EXPORT_FORMAT, "model_bytes": (target / MODEL_FILE).stat().st_size}
    (target / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
