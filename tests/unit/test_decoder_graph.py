"""The load-time lm_head change on small graphs built here: the logits of the rows asked for, equal to the same rows
of the unchanged graph, with the weights read from an external data file as the built variants keep them."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.engines.decoder_graph import LOGIT_ROWS, session_config, with_logit_rows

HIDDEN, VOCAB = 8, 300


def save_decoder(folder: Path, head: str = "MatMul", cast: bool = False) -> Path:
    """hidden [batch, positions, HIDDEN] -> Relu -> lm_head -> (Cast) -> logits, weights in model.onnx.data."""
    weight = np.random.default_rng(0).normal(size=(HIDDEN, VOCAB)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["hidden"], ["normed"])]
    if head == "MatMul":
        nodes.append(helper.make_node("MatMul", ["normed", "lm_head.weight"], ["projected" if cast else "logits"]))
    else:
        nodes.append(helper.make_node("Add", ["normed", "normed"], ["logits"]))
    if cast:
        nodes.append(helper.make_node("Cast", ["projected"], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "positions", HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "positions", VOCAB])],
        [numpy_helper.from_array(weight, "lm_head.weight")])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def session(model: bytes | str, folder: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    for key, value in session_config(folder).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("cast", [False, True])
def test_the_changed_graph_computes_only_the_rows_asked_for_and_the_same_values(tmp_path, cast):
    path = save_decoder(tmp_path, cast=cast)
    hidden = np.random.default_rng(1).normal(size=(2, 5, HIDDEN)).astype(np.float32)
    every = session(str(path), tmp_path).run(["logits"], {"hidden": hidden})[0]
    changed = with_logit_rows(path)
    assert changed is not None and len(changed) < path.with_suffix(".onnx.data").stat().st_size  # weights not inside
    narrowed = session(changed, tmp_path)
    last = narrowed.run(["logits"], {"hidden": hidden, LOGIT_ROWS: np.array([4])})[0]
    some = narrowed.run(["logits"], {"hidden": hidden, LOGIT_ROWS: np.array([0, 3])})[0]
    assert last.shape == (2, 1, VOCAB) and some.shape == (2, 2, VOCAB)
    np.testing.assert_array_equal(last[:, 0], every[:, 4])
    np.testing.assert_array_equal(some, every[:, [0, 3]])


def test_a_graph_already_changed_is_left_as_it_is(tmp_path):
    path = save_decoder(tmp_path)
    (tmp_path / "changed.onnx").write_bytes(with_logit_rows(path))
    assert with_logit_rows(tmp_path / "changed.onnx") is None


def test_logits_that_do_not_come_from_a_matmul_leave_the_graph_unchanged(tmp_path):
    assert with_logit_rows(save_decoder(tmp_path, head="Add")) is None
