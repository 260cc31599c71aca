"""``torch.export`` programs (``torch.export.save``, usually ``.pt2``), loaded with ``torch.export.load``.

The program's user input records its shape; a dynamic batch dimension (``dynamic_shapes``) takes any batch, a
fixed one is served in chunks of that size (the last padded). The unlifted module is differentiable in its input;
its layers are flattened into a graph, so penultimate features cannot be hooked.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, first_line, register_format
from modelsteal.models.formats.spec import ModelSpec


class FixedBatch(nn.Module):
    """Runs ``fn`` (which takes exactly ``batch`` rows) on any batch: chunks of ``batch`` rows, the last padded
    with zeros and its padding dropped from the answer."""

    def __init__(self, fn: nn.Module, *, batch: int) -> None:
        super().__init__()
        self.fn = fn
        self.batch = int(batch)

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for chunk in x.split(self.batch):
            n = len(chunk)
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, *chunk.shape[1:])])
            out = self.fn(chunk)
            outs.append((out[0] if isinstance(out, tuple | list) else out)[:n])
        return torch.cat(outs)


class ExportedModule(nn.Module):
    """An exported program's module; ``train``/``eval`` stop here (an exported graph is frozen in the mode it
    was exported in and refuses to switch)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = bool(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.graph(x)


def file_shape(dims: list, layout: str | None) -> tuple[int, ...] | None:
    """The toolkit's ``(C, H, W)`` / ``(D,)`` input shape from a file's declared ``(N, ...)`` dims (``None``
    when a non-batch dim is symbolic); NHWC dims are reordered."""
    rest = dims[1:]
    if not rest or not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    if layout == "nhwc" and len(rest) == 3:
        return (rest[2], rest[0], rest[1])
    return tuple(rest)


def check_declared_shape(source: str, spec: ModelSpec, declared: tuple[int, ...] | None) -> ModelSpec:
    """``spec`` with the input shape the file declares; a one-line error when the spec says another."""
    if declared is None:
        return spec
    if spec.input_shape is not None and tuple(spec.input_shape) != declared:
        raise ValueError(f"the spec says inputs {tuple(spec.input_shape)}, but {source} declares "
                         f"{declared} ({spec.layout or 'nchw'} layout)")
    return dataclasses.replace(spec, input_shape=declared)


@register_format("export")
class ExportFormat(ModelFormat):
    """``torch.export.save`` output: a zip with ``models/*.json`` and an ``archive_format`` entry."""

    description = "a torch.export program (.pt2)"
    gradients = True
    features = False

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        return any(n.endswith("archive_format") for n in facts.members) or any(
            "/models/" in n and n.endswith(".json") for n in facts.members)

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        try:
            program = torch.export.load(source)
        except Exception as e:  # noqa: BLE001 - whatever torch.export.load raises, the file is not usable
            raise ValueError(f"{source} is not a loadable torch.export program ({first_line(e)})") from None
        names = list(program.graph_signature.user_inputs)
        if len(names) != 1:
            raise ValueError(f"{source} takes {len(names)} inputs; modelsteal serves classifiers of one input tensor")
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
        val = node.meta.get("val")
        dims = [int(d) if isinstance(d, int) else None for d in val.shape] if val is not None else []
        spec = check_declared_shape(source, spec, file_shape(dims, spec.layout) if dims else None)
        module: nn.Module = ExportedModule(program.module().to(device))
        if dims and isinstance(dims[0], int):
            module = FixedBatch(module, batch=dims[0])
        return Loaded(module=module, spec=spec, meta={}, native=program)
