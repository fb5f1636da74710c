"""Unnormalised probabilities of whole logits rows, grouped in blocks, in one ONNX Runtime call.

The sampler's draw over the full vocabulary needs softmax(logits / temperature) for every entry and each
block's total (sampling.py). That softmax over [rows, vocab] is most of the cost of sampling at temperature 1;
ONNX Runtime's fused Softmax kernel does it about twice as fast as numpy's max, subtract and exp (measured on
an AVX2 CPU), so it runs as a small graph, built once per vocabulary size.
"""

from __future__ import annotations

import numpy as np

OPSET = 17


class BlockProbabilities:
    def __init__(self, vocab: int, block: int) -> None:
        import onnxruntime as ort

        self.vocab, self.block = vocab, block
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # it runs on the model thread, between forward passes
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(_graph(vocab, block).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, logits: np.ndarray, temperatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For logits [n, vocab] and temperatures [n]: probabilities [n, blocks, block] (zero padding past the
        vocabulary) and their block totals [n, blocks]."""
        inverse = (1.0 / temperatures.astype(np.float32)).reshape(-1, 1)
        probs, totals = self.session.run(None, {"logits": np.ascontiguousarray(logits, np.float32),
                                                "inverse_temperature": inverse})
        return probs, totals


def _graph(vocab: int, block: int):
    from onnx import TensorProto, helper

    padding = -vocab % block
    nodes = [
        helper.make_node("Mul", ["logits", "inverse_temperature"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["softmax"], axis=1),  # one fused kernel: max, exp, sum
        helper.make_node("Pad", ["softmax", "pads"], ["padded"]) if padding else
        helper.make_node("Identity", ["softmax"], ["padded"]),
        helper.make_node("Reshape", ["padded", "block_shape"], ["probs"]),
        helper.make_node("ReduceSum", ["probs", "last_axis"], ["totals"], keepdims=0),
    ]
    constants = [
        helper.make_tensor("block_shape", TensorProto.INT64, [3], [0, -1, block]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
    ]
    if padding:
        constants.append(helper.make_tensor("pads", TensorProto.INT64, [4], [0, 0, 0, padding]))
    graph = helper.make_graph(
        nodes, "block_probabilities",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", vocab]),
         helper.make_tensor_value_info("inverse_temperature", TensorProto.FLOAT, ["rows", 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["rows", None, block]),
         helper.make_tensor_value_info("totals", TensorProto.FLOAT, ["rows", None])],
        initializer=constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
