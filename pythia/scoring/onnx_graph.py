"""The ONNX graph of one exported MLP region (``build_onnx_model``).

Built from the same ``MLPModel.export_numpy()`` payload the NumPy runtime reads
(``runtime.check_export``), with the temperature and the Bayes prior ratio folded in exactly as
``runtime.FusedMLP`` does, so its probabilities equal the NumPy scorer's (parity test:
tests/test_onnx.py). ``pythia.scoring.onnx_export`` writes these graphs into an export folder
and runs them; this module imports nothing from it.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, OOV_ID, TARGETS, Encoders
from pythia.scoring.export_format import ACTIVITY, WIDE, WIDE_NUMERIC, check_export
from pythia.scoring.runtime import JOINT, joint_head

OPSET = 17  # Split with a sizes input (>= 13), Softmax over the last axis (>= 13)
IR_VERSION = 8  # what opset 17 needs; a newer IR would shut out older runtimes
IDS_INPUT = "ids"
NUMERIC_INPUT = "numeric"


def build_onnx_model(export: Mapping[str, Any], encoders: Encoders, *,
                     doc_string: str = "", metadata: Mapping[str, str] | None = None):
    """The ONNX graph of one exported MLP region (float32 arithmetic, opset ``OPSET``).

    The graph, in order:

    * the boundary rules of the scorer, so a foreign caller can neither crash it nor read
      another feature's rows: an id outside ``[0, vocabulary size)`` becomes OOV, a non-finite
      numeric 0 (the training mean);
    * one Gather per embedding table (ids split by column), concatenated with the numerics.
      Measured against one gather from a zero-padded stack of the tables: that has 16 fewer
      nodes (faster for one row) but its first matmul multiplies the padding too, which made
      4,096-row batches ~15% slower -- and the batched path is where ONNX Runtime is used.
      Gathering equally wide tables together measured no faster; gathering rows of the tables
      pre-multiplied by the first layer and summing them (no first Gemm) ~2.5x slower;
    * the trunk as Gemm + Relu;
    * only the AgeGender head (``runtime.joint_head``): one Gemm with ``1 / temperature``
      folded into the weights and ``log(prior_ratio)`` into the bias (``softmax(z + log r) =
      softmax(z) * r / norm``); when the export has a wide part, plus AgeGender's: one Gather
      from its stacked wide tables (ids offset per feature), a ReduceSum over the features and
      ``numeric @ wide_numeric``, scaled like the head; with a temperature per activity bin
      (export entry ``ACTIVITY``) nothing is folded: the logits are multiplied by their row's
      ``1 / T`` (the normalised activity compared with the edges, the bins counted, a Gather
      of the scales) and ``log(prior_ratio)`` is added after; a bin scored by the wide part
      alone (the entry's ``deep``) has the head's kernel part multiplied by 0 (a MatMul, a
      Gather of the factors, a Mul, then the bias); then Softmax; ``gender`` and ``age``
      are its marginals (a Reshape and two ReduceSums), so the outputs agree. The gender and
      age heads were training aids: no node computes them.

    Args:
        export: an ``export_numpy()`` dict (checked with ``check_export``).
        encoders: the encoders it was trained with (vocabulary sizes, age edges).
        doc_string: stored as the model's doc string.
        metadata: extra ``metadata_props`` (strings).

    Returns:
        An ``onnx.ModelProto``, checked with ``onnx.checker``.
    """
    import onnx

    check_export(export, encoders)
    g = _Graph()
    tables = [np.asarray(t, dtype=np.float64) for _, t in export["embeddings"]]
    ids, numeric = _boundary(g, [t.shape[0] for t in tables])
    h = _trunk(g, export, tables, ids, numeric)
    _heads(g, export, h, ids, numeric, [t.shape[0] for t in tables])
    model = _model(g, encoders, len(tables), len(export["numeric"]), doc_string, metadata)
    onnx.checker.check_model(model)
    return model


class _Graph:
    """Initializers and nodes of a graph being built, in the order they are added."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(self._numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: str | list[str], **attrs: Any) -> str:
        outs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(self._helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs[0]


def _boundary(g: _Graph, sizes: list[int]) -> tuple[str, str]:
    """The scorer's boundary rules: ids out of range -> OOV, non-finite numerics -> 0."""
    node, const = g.node, g.const
    ids_ok = node("And", [node("GreaterOrEqual", [IDS_INPUT, const("zero_id", 0, np.int64)],
                               "ids_ge_0"),
                          node("Less", [IDS_INPUT, const("vocab_sizes", sizes, np.int64)],
                               "ids_lt_size")], "ids_ok")
    ids = node("Where", [ids_ok, IDS_INPUT, const("oov_id", OOV_ID, np.int64)], "ids_clean")
    finite = node("Equal", [node("Sub", [NUMERIC_INPUT, NUMERIC_INPUT], "numeric_minus_self"),
                            const("zero", 0.0)], "numeric_finite")  # inf - inf, NaN: NaN
    numeric = node("Where", [finite, NUMERIC_INPUT, const("mean", 0.0)], "numeric_clean")
    return ids, numeric


def _trunk(g: _Graph, export: Mapping[str, Any], tables: list[np.ndarray], ids: str,
           numeric: str) -> str:
    """Gather per embedding table, concat with the numerics, then the trunk's Gemm + Relu."""
    node, const = g.node, g.const
    # Trunk input: [emb_0[id_0] .. emb_k[id_k], numerics], the Keras model's concat.
    columns = [f"ids_{name}" for name, _ in export["embeddings"]]
    node("Split", [ids, const("ids_split", [1] * len(tables), np.int64)], columns, axis=1)
    gathered = [node("Gather", [const(f"emb_{name}", t), col], f"emb_{name}_rows", axis=0)
                for (name, _), t, col in zip(export["embeddings"], tables, columns)]
    embedded = node("Concat", gathered, "embedded", axis=2)  # (N, 1, sum of dims)
    flat = node("Reshape", [embedded, const("flat_shape", [-1, sum(t.shape[1] for t in tables)],
                                            np.int64)], "embedded_flat")
    h = node("Concat", [flat, numeric], "trunk_in", axis=1)
    for i, (W, b, act) in enumerate(export["trunk"]):
        h = node("Gemm", [h, const(f"trunk_{i}_W", W), const(f"trunk_{i}_b", b)], f"trunk_{i}")
        if act == "relu":
            h = node("Relu", [h], f"trunk_{i}_relu")
    return h


def _heads(g: _Graph, export: Mapping[str, Any], h: str, ids: str, numeric: str,
           sizes: list[int]) -> None:
    """The AgeGender head as one Gemm (plus its wide part), its Softmax, and the gender and
    age outputs as its marginals; the gender and age heads are training aids, not computed."""
    W, b, scale, shift = joint_head(export)
    bins = _activity_bins(g, export, numeric) if shift is not None else None
    if bins is not None and "deep" in export[ACTIVITY]:  # wide-only bins: the kernel part x 0
        z = g.node("MatMul", [h, g.const("head_W", W)], "head_kernel")
        z = g.node("Mul", [z, _per_bin(g, "activity_deep", export[ACTIVITY]["deep"], bins)],
                   "head_kernel_gated")
        z = g.node("Add", [z, g.const("head_b", b)], "head_logits")
    else:
        z = g.node("Gemm", [h, g.const("head_W", W), g.const("head_b", b)], "head_logits")
    if WIDE in export:
        z = g.node("Add", [z, _wide(g, export, ids, numeric, sizes, scale)], "wide_logits")
    if bins is not None:
        inverse = 1.0 / np.asarray(export[ACTIVITY]["temperature"], np.float64)
        z = g.node("Mul", [z, _per_bin(g, "activity_inverse_t", inverse, bins)],
                   "activity_logits")
        z = g.node("Add", [z, g.const("prior_shift", shift)], "prior_logits")
    g.node("Softmax", [z], JOINT, axis=-1)
    _marginals(g, len(export["prior_ratio"][JOINT]) // len(features.GENDER_CLASSES))


def _activity_bins(g: _Graph, export: Mapping[str, Any], numeric: str) -> str:
    """(N, 1) int64: each row's activity bin, how many edges the row's normalised value
    reaches (``runtime.ActivityScale``)."""
    node, const = g.node, g.const
    entry = export[ACTIVITY]
    column = list(export["numeric"]).index(entry["feature"])
    value = node("Gather", [numeric, const("activity_column", [column], np.int64)],
                 "activity_value", axis=1)  # (N, 1)
    reached = node("Cast", [node("GreaterOrEqual", [value, const("activity_edges",
                                                                   entry["edges"])],
                                 "activity_reached")], "activity_reached_int", to=7)  # INT64
    return node("ReduceSum", [reached, const("activity_axes", [1], np.int64)], "activity_bin",
                keepdims=1)  # (N, 1)


def _per_bin(g: _Graph, name: str, values: Any, bins: str) -> str:
    """(N, 1): each row's value of its bin (``values``: one per bin)."""
    return g.node("Gather", [g.const(name, np.asarray(values, np.float64)), bins],
                  f"{name}_rows", axis=0)


def _marginals(g: _Graph, n_age: int) -> None:
    """``gender`` and ``age`` as the marginals of ``age_gender`` (gender-major classes), so the
    three outputs agree exactly; the gender and age heads were training aids."""
    cube = g.node("Reshape", [JOINT, g.const("joint_cube", [-1, len(features.GENDER_CLASSES),
                                                            n_age], np.int64)], "joint_cube_out")
    g.node("ReduceSum", [cube, g.const("gender_axes", [2], np.int64)], "gender", keepdims=0)
    g.node("ReduceSum", [cube, g.const("age_axes", [1], np.int64)], "age", keepdims=0)


def _wide(g: _Graph, export: Mapping[str, Any], ids: str, numeric: str, sizes: list[int],
          scale: float) -> str:
    """AgeGender's wide logits, (N, classes), scaled like its Gemm: rows ``offset[i] + id_i``
    of one stacked table summed over the features, plus ``numeric @ W``."""
    node, const = g.node, g.const
    tables = dict(export[WIDE][JOINT])
    table = np.concatenate([np.asarray(tables[name], np.float64) * scale
                            for name in CATEGORICAL_FEATURES])
    numeric_W = np.asarray(export[WIDE_NUMERIC][JOINT], np.float64) * scale
    offsets = np.cumsum([0] + sizes[:-1])
    rows = node("Add", [ids, const("wide_offsets", offsets, np.int64)], "wide_rows")
    gathered = node("Gather", [const("wide_table", table), rows], "wide_gathered", axis=0)
    summed = node("ReduceSum", [gathered, const("wide_sum_axes", [1], np.int64)], "wide_sum",
                  keepdims=0)
    linear = node("MatMul", [numeric, const("wide_numeric_W", numeric_W)], "wide_numeric")
    return node("Add", [summed, linear], "wide")


def _model(g: _Graph, encoders: Encoders, n_cat: int, n_num: int, doc_string: str,
           metadata: Mapping[str, str] | None):
    """The graph's inputs and outputs, opset, IR version and metadata: an ``onnx.ModelProto``."""
    from onnx import TensorProto, helper

    labels = {t: list(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    graph = helper.make_graph(
        g.nodes, "pythia_mlp",
        [helper.make_tensor_value_info(IDS_INPUT, TensorProto.INT64, ["N", n_cat]),
         helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, ["N", n_num])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", len(labels[t])])
         for t in TARGETS],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pythia", doc_string=doc_string)
    model.ir_version = IR_VERSION
    props = {"spec_version": features.spec_version(),
             "categorical_features": json.dumps(list(CATEGORICAL_FEATURES)),
             "numeric_features": json.dumps(list(NUMERIC_FEATURES)),
             "class_labels": json.dumps(labels)}
    props.update(metadata or {})
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    return model
