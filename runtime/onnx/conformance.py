"""The ONNX backend conformance suite (`onnx.backend.test`) run on dln, case by case.

`SUBSET` is the training-relevant part of the node cases: the cases of these op types, and their
`_expanded` twins (the same case written as the op's ONNX function body: shape arithmetic,
`CastLike`, `ConstantOfShape`, ...).  The pytorch-converted and pytorch-operator collections are
run whole.  A case passes when every output has the expected shape and element type and is within
the case's rtol/atol (`onnx.backend.test.runner.Runner.assert_similar_outputs`, the suite's own
comparison).

    python -m dln.runtime.onnx.conformance [--device CPU] [--kind node] [--failures]
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SUBSET = frozenset("""
    Abs Acos Acosh Add And Asin Asinh Atan Atanh Ceil Celu Clip Cos Cosh Div Elu Equal Erf Exp Floor Gelu
    Greater GreaterOrEqual HardSigmoid HardSwish IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min
    Mish Mod Mul Neg Not Or PRelu Pow Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus
    Softsign Sqrt Sub Sum Swish Tan Tanh ThresholdedRelu Where Xor
    MatMul Gemm Conv ConvTranspose
    AveragePool MaxPool GlobalAveragePool GlobalMaxPool LpPool
    BatchNormalization LayerNormalization InstanceNormalization GroupNormalization RMSNormalization
    LpNormalization MeanVarianceNormalization
    Softmax LogSoftmax Hardmax
    ArgMax ArgMin ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare
    Concat Expand Flatten Gather GatherElements Identity Pad Reshape Shape Size Slice Split Squeeze Tile
    Transpose Unsqueeze ConstantOfShape Constant
    RNN LSTM GRU Dropout Einsum Attention SoftmaxCrossEntropyLoss NegativeLogLikelihoodLoss
""".split())

KINDS = ("node", "pytorch-converted", "pytorch-operator")

# The cases of SUBSET dln does not pass, and why (tests/onnx/test_conformance.py holds the list to the
# truth both ways: a case not listed must pass, a listed case must still fail).
EXPECTED_FAILURES: dict[str, str] = {
    "test_identity_sequence": "a sequence of tensors: dln's values are tensors",
    "test_identity_opt": "an optional value: dln's values are tensors",
    "test_equal_string": "string tensors: dln's element types are numbers and bool",
    "test_equal_string_broadcast": "string tensors: dln's element types are numbers and bool",
    "test_attention_4d_gqa_with_past_and_present_fp16_expanded": "2 fp16 ulps on 6 of 576 values: the expected "
    "values come from numpy summing the fp16 products in fp16; dln's fp16 MatMul and Softmax accumulate in fp32 "
    "(the non-expanded case, computed in fp32 and rounded once, passes)",
    **{f"test_training_dropout{suffix}": "a seeded mask: dln draws from its own Philox stream, the expected "
       "masks are numpy's RandomState(seed)" for suffix in ("", "_mask", "_default", "_default_mask")},
}


@dataclass
class Case:
    name: str
    kind: str
    op: str          # the op type the case tests (the function's, for an expanded case)
    model: object
    data: list       # (inputs, expected outputs) pairs
    rtol: float
    atol: float


def _load(kind: str):
    from onnx.backend.test.loader import load_model_tests   # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return load_model_tests(kind=kind)


def cases(kind: str = "node") -> Iterator[Case]:
    """The cases of a collection (for "node", those of SUBSET), built in memory."""
    import onnx   # noqa: PLC0415
    tests = _load(kind)
    by_name = {t.name: t for t in tests}
    for t in tests:
        model = t.model if t.model is not None else onnx.load(f"{t.model_dir}/model.onnx")
        ops = sorted({n.op_type for n in model.graph.node})
        base = by_name.get(re.sub(r"_expanded(_ver\d+)?", "", t.name), t)
        base_model = base.model if base.model is not None else model
        base_ops = sorted({n.op_type for n in base_model.graph.node})
        op = base_ops[0] if len(base_ops) == 1 else ops[0] if len(ops) == 1 else "+".join(ops)
        if kind == "node" and op not in SUBSET:
            continue
        yield Case(t.name, kind, op, model, _data(t), t.rtol, t.atol)


def _data(t) -> list:
    if t.data_sets is not None:
        return list(t.data_sets)
    import glob   # noqa: PLC0415
    import onnx   # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    def read(pattern: str) -> list:
        files = sorted(glob.glob(pattern), key=lambda f: int(re.findall(r"(\d+)\.pb$", f)[0]))
        out = []
        for f in files:
            tensor = onnx.TensorProto()
            with open(f, "rb") as fh:
                tensor.ParseFromString(fh.read())
            out.append(numpy_helper.to_array(tensor))
        return out
    return [(read(f"{d}/input_*.pb"), read(f"{d}/output_*.pb"))
            for d in sorted(glob.glob(f"{t.model_dir}/test_data_set*"))]


def check(case: Case, device: str = "CPU") -> str | None:
    """None when the case passes on dln; otherwise why not (one line)."""
    from onnx.backend.test.runner import Runner   # noqa: PLC0415

    from dln.runtime.onnx.backend import DlnBackend   # noqa: PLC0415
    try:
        with np.errstate(all="ignore"):
            rep = DlnBackend.prepare(case.model, device)
            for inputs, expected in case.data:
                got = rep.run(inputs)
                Runner.assert_similar_outputs(list(expected), list(got), case.rtol, case.atol)
    except Exception as e:   # noqa: BLE001  (a failing case, whatever the failure)
        text = " ".join(str(e).split())
        return f"{type(e).__name__}: {text[:300]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--kind", action="append", choices=KINDS)
    parser.add_argument("--op", action="append", help="only cases of these op types")
    parser.add_argument("--failures", action="store_true", help="print each failing case and why")
    args = parser.parse_args(argv)
    for kind in args.kind or KINDS:
        passed = total = 0
        for case in cases(kind):
            if args.op and case.op not in args.op:
                continue
            total += 1
            why = check(case, args.device)
            passed += why is None
            if why is not None and args.failures:
                print(f"FAIL {case.name} [{case.op}] {why}")
        print(f"{kind}: {passed}/{total} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
