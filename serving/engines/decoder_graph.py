"""A load-time change to a built decoder graph: the lm_head runs only on the positions asked for.

The ONNX Runtime GenAI builder's graph projects every position of its input onto the vocabulary, so a
prefill of n tokens computes and returns n x vocab logits (at 2,000 tokens about 390 MB and a fifth of the
work) when sampling needs the last row only. `with_logit_rows` adds an input, `logit_rows` (int64 [k],
positions within the step's tokens), and a Gather of those positions in front of the lm_head, so `logits`
becomes [batch, k, vocab]. The graph is changed in memory when the session is made; the files on disk, and
variants built before this, stay as they are (the weights are read from the folder as before).
"""

from __future__ import annotations

import logging
from pathlib import Path

LOGIT_ROWS = "logit_rows"
LOGITS = "logits"
PROJECTIONS = ("MatMul", "MatMulNBits")  # the lm_head, quantized or not, over [batch, positions, hidden]
PASS_THROUGH = ("Cast",)  # a dtype cast between the lm_head and the output (fp16 models)
logger = logging.getLogger("ray.serve.quantserve.engine")


class UnknownGraph(ValueError):
    """The graph's logits do not come from a projection this change knows how to narrow."""


def with_logit_rows(model_path: Path) -> bytes | None:
    """The decoder at `model_path` with a `logit_rows` input, serialized without its external weights (give the
    session their folder, see `session_config`); None when the graph already has that input or its lm_head
    could not be found (then the caller loads the file as it is)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    if any(value.name == LOGIT_ROWS for value in graph.input):
        return None
    try:
        head = _lm_head(graph)
    except UnknownGraph as unknown:
        logger.warning("%s: %s; every position's logits will be computed", model_path, unknown)
        return None
    selected = f"{head.name or 'lm_head'}/logit_rows_selected"
    gather = onnx.helper.make_node("Gather", [head.input[0], LOGIT_ROWS], [selected], axis=1,
                                   name=f"{head.name or 'lm_head'}/SelectLogitRows")
    head.input[0] = selected
    graph.node.insert(list(graph.node).index(head), gather)
    graph.input.append(onnx.helper.make_tensor_value_info(LOGIT_ROWS, onnx.TensorProto.INT64, ["logit_count"]))
    for output in graph.output:
        if output.name == LOGITS and len(output.type.tensor_type.shape.dim) == 3:
            output.type.tensor_type.shape.dim[1].dim_param = "logit_count"
    return model.SerializeToString()


def session_config(folder: Path) -> dict[str, str]:
    """Session config entries that let a graph loaded from bytes find its external weights in `folder`."""
    return {"session.model_external_initializers_file_folder_path": str(folder)}


def _lm_head(graph):
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(LOGITS)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is None or node.op_type not in PROJECTIONS:
        raise UnknownGraph(f"the logits come from {node.op_type if node is not None else 'nowhere'}, not a MatMul")
    return node
