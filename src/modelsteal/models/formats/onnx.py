"""ONNX models run by ONNX Runtime (the ``onnx`` extra: ``pip install 'modelsteal[onnx]'``, imported lazily).

The session's one input declares its dtype and, usually, its shape (a symbolic or fixed batch dimension); a fixed
batch is served in chunks of that size. ONNX Runtime gives no gradients and no features: MAD uses a surrogate of
its own for such a victim, feature-space detectors need a torch feature model. On CUDA the CUDA execution provider
is used when the installed ONNX Runtime has it (the CPU one otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal._extras import require_extra
from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, first_line, register_format
from modelsteal.models.formats.exported import FixedBatch, check_declared_shape, file_shape
from modelsteal.models.formats.spec import ModelSpec

#: ONNX tensor types → the spec's dtype names
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}


class OnnxRuntimeModule(nn.Module):
    """An ``onnxruntime.InferenceSession`` as a module: ``(N, ...)`` tensor in, its first output as a tensor on
    the input's device out (no gradients: the session runs outside autograd)."""

    def __init__(self, session: Any, *, input_name: str, output_name: str) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.output_name = output_name

    def forward(self, x: Tensor) -> Tensor:
        arr = x.detach().cpu().contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: arr})
        return torch.from_numpy(out).to(x.device)

    def __deepcopy__(self, memo: dict) -> OnnxRuntimeModule:  # a session is shared, not copied
        return self


def _session(ort: Any, source: str, device: torch.device) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors for a bad file are its own classes
        raise ValueError(f"{source} is not an ONNX model ONNX Runtime can run ({first_line(e)})") from None


@register_format("onnx")
class OnnxFormat(ModelFormat):
    """An ONNX ``ModelProto`` (``.onnx``): told by its name or by its first protobuf fields (``ir_version``
    then ``producer_name``)."""

    description = "an ONNX model"
    gradients = False
    features = False

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        if facts.path is None or facts.members:
            return False
        if facts.path.suffix.lower() == ".onnx":
            return True
        h = facts.head
        return len(h) > 3 and h[0] == 0x08 and 1 <= h[1] <= 32 and h[2] in (0x12, 0x1A, 0x22, 0x3A)

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        ort = require_extra("onnxruntime", extra="onnx", purpose="ONNX models")
        session = _session(ort, source, device)
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{source} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); modelsteal "
                             "serves classifiers of one input tensor")
        outputs = [o for o in session.get_outputs() if o.type in _ONNX_DTYPES]
        if not outputs:
            raise ValueError(f"{source} has no floating-point output tensor (its outputs: "
                             f"{', '.join(o.name + ' ' + o.type for o in session.get_outputs())})")
        inp = inputs[0]
        dtype = _ONNX_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"{source} takes {inp.type} inputs; modelsteal sends float32, float64 or float16")
        if spec.dtype is not None and spec.dtype != dtype:
            raise ValueError(f"the spec says dtype {spec.dtype}, but {source} takes {dtype} inputs")
        dims = [d if isinstance(d, int) else None for d in inp.shape]
        spec = check_declared_shape(source, dataclasses.replace(spec, dtype=dtype), file_shape(dims, spec.layout))
        module: nn.Module = OnnxRuntimeModule(session, input_name=inp.name, output_name=outputs[0].name)
        if dims and isinstance(dims[0], int):
            module = FixedBatch(module, batch=dims[0])
        return Loaded(module=module, spec=spec, meta={"onnx_input": inp.name, "onnx_output": outputs[0].name},
                      native=session)
