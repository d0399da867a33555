"""A component's ONNX graph with a low-rank branch beside each adapted layer, its two
projections graph inputs: a LoRA (or several, or new scales) is then a new feed, not a new
export or a recompile.

Each adapted layer is found by the module path the exporter writes into its node names
(`/model/down_blocks.0/.../attn1/to_q/MatMul`); a MatMul on a 2-D weight gets
`x @ down @ up` added to its output, a Conv gets `conv(conv(x, down), up)` (the down
projection with the layer's own kernel, strides and padding). The weights stay where they are
(the new graph lies beside the original and shares its external data).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

LAYER_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Target:
    """One layer a LoRA can adapt: its module path, op, and input and output widths."""

    module: str
    op: str
    width_in: int
    width_out: int
    kernel: tuple[int, ...] = ()
    pointwise: bool = False  # a 1x1 conv of stride 1, unpadded: its branch is MatMuls
    rank: int | None = None  # a fixed rank for its branch (OpenVINO's wider convs); else any

    @property
    def spelled(self) -> str:
        """Its module path, and its fixed rank if it has one (a twin's name is made of these)."""
        return self.module if self.rank is None else f"{self.module}@{self.rank}"

    def input_names(self, index: int) -> tuple[str, str]:
        """The graph inputs of its down and up projections."""
        return f"lora_down_{index}", f"lora_up_{index}"

    def input_shapes(self, index: int) -> tuple[list, list]:
        """The shapes of those inputs (the rank fixed, or named lora_rank_INDEX)."""
        rank = self.rank or f"lora_rank_{index}"
        if self.op == "MatMul":
            return [self.width_in, rank], [rank, self.width_out]
        return [rank, self.width_in, *self.kernel], [self.width_out, rank, 1, 1]


def _module_of(node_name: str) -> str | None:
    """'down_blocks.0.attentions.0...to_q' from '/model/down_blocks.0/.../to_q/MatMul'."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "model":
        return None
    return ".".join(parts[1:-1])


def load_graph(path: Path):
    """The ONNX model at `path`, its external weights left on disk."""
    try:
        import onnx
    except ImportError:
        raise InputError(
            "onnx is not installed: run-time LoRAs need it, install it with  pip install "
            "fastimg[lora]"
        ) from None
    return onnx.load(str(path), load_external_data=False)


def find_targets(model) -> dict[str, Target]:
    """Every layer of the graph a LoRA can adapt, by module path."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    targets = {}
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        module, shape = _module_of(node.name), weights.get(node.input[1])
        if module is None or shape is None:
            continue
        if node.op_type == "MatMul" and len(shape) == 2:
            targets[module] = Target(module, "MatMul", shape[0], shape[1])
        elif node.op_type == "Gemm" and len(shape) == 2 and _plain_gemm(node):
            # (a Linear on 2-D input: x @ W.T + b; its branch is a MatMul's)
            width_in, width_out = shape[::-1] if _attribute(node, "transB", 0) else shape
            targets[module] = Target(module, "MatMul", width_in, width_out)
        elif node.op_type == "Conv" and len(shape) == 4 and _groups(node) == 1:
            kernel = tuple(shape[2:])
            pointwise = _pointwise(node, kernel)
            targets[module] = Target(module, "Conv", shape[1], shape[0], kernel, pointwise)
    return targets


def _groups(node) -> int:
    return _attribute(node, "group", 1)


def _attribute(node, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        return default
    return found.i if found.type == found.INT else found.f


def _plain_gemm(node) -> bool:
    """A Gemm that is a Linear: A not transposed, alpha 1 (then x @ down @ up adds to it)."""
    return _attribute(node, "transA", 0) == 0 and _attribute(node, "alpha", 1.0) == 1.0


# How the branches are written: a graph written under another format is another graph.
BRANCH_FORMAT = 2  # 2: 1x1 convolutions branched as MatMuls


def variant_key(source_digest: str, modules: list[str]) -> str:
    """The name of the graph with branches at `modules` of the graph `source_digest`."""
    text = f"{BRANCH_FORMAT}\n{source_digest}\n" + "\n".join(sorted(modules))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_branched_graph(model, order: list[Target], path: Path) -> None:
    """Write `model` with a LoRA branch at each target of `order` (its inputs in that order) to
    `path`, beside the original so that its external data resolves."""
    import onnx
    from onnx import TensorProto, helper

    nodes = {_module_of(n.name): n for n in model.graph.node if n.op_type in LAYER_OPS}
    added = []
    for index, target in enumerate(order):
        node = nodes[target.module]
        down_name, up_name = target.input_names(index)
        down_shape, up_shape = target.input_shapes(index)
        model.graph.input.extend(
            [
                helper.make_tensor_value_info(down_name, TensorProto.FLOAT, down_shape),
                helper.make_tensor_value_info(up_name, TensorProto.FLOAT, up_shape),
            ]
        )
        base = node.output[0]
        plain = f"{base}__plain"
        node.output[0] = plain
        low, delta = f"{base}__lora_low", f"{base}__lora_delta"
        if target.op == "MatMul":  # (a MatMul's or a Gemm's layer)
            branch = [
                helper.make_node("MatMul", [node.input[0], down_name], [low]),
                helper.make_node("MatMul", [low, up_name], [delta]),
            ]
        elif target.pointwise:
            branch = _pointwise_branch(node.input[0], down_name, up_name, base)
        else:
            kept = [a for a in node.attribute if a.name in ("strides", "pads", "dilations",
                                                           "auto_pad")]  # fmt: skip
            first = helper.make_node("Conv", [node.input[0], down_name], [low])
            first.attribute.extend(kept)
            branch = [first, helper.make_node("Conv", [low, up_name], [delta])]
        branch.append(helper.make_node("Add", [plain, delta], [base]))
        for extra in branch:
            extra.name = f"{node.name}__lora_{extra.op_type}_{len(added)}"
            added.append((node, extra))
    _insert_after(model.graph, added)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def _pointwise(node, kernel: tuple) -> bool:
    """A 1x1 convolution of stride 1 without padding: a MatMul over the channels."""
    if kernel != (1, 1):
        return False
    for attribute in node.attribute:
        if attribute.name in ("strides", "dilations") and any(v != 1 for v in attribute.ints):
            return False
        if attribute.name == "pads" and any(attribute.ints):
            return False
        if attribute.name == "auto_pad" and attribute.s not in (b"NOTSET", b"VALID"):
            return False
    return True


def _pointwise_branch(x: str, down: str, up: str, base: str) -> list:
    """A 1x1 conv's branch as MatMuls over the channels (channels last and back): OpenVINO
    compiles no convolution whose weights are a run-time input, but MatMuls it does."""
    from onnx import helper

    def node(op, inputs, suffix, **attributes):
        return helper.make_node(op, inputs, [f"{base}__lora_{suffix}"], **attributes)

    return [
        node("Transpose", [x], "x_last", perm=[0, 2, 3, 1]),
        node("Flatten", [down], "down_2d", axis=1),  # (rank, in)
        node("Transpose", [f"{base}__lora_down_2d"], "down_t", perm=[1, 0]),
        node("MatMul", [f"{base}__lora_x_last", f"{base}__lora_down_t"], "low"),
        node("Flatten", [up], "up_2d", axis=1),  # (out, rank)
        node("Transpose", [f"{base}__lora_up_2d"], "up_t", perm=[1, 0]),
        node("MatMul", [f"{base}__lora_low", f"{base}__lora_up_t"], "delta_last"),
        node("Transpose", [f"{base}__lora_delta_last"], "delta", perm=[0, 3, 1, 2]),
    ]


def _insert_after(graph, added: list) -> None:
    """Put each new node right after the layer it branches from (the order stays topological)."""
    from onnx import NodeProto

    after: dict[str, list] = {}
    for node, extra in added:
        after.setdefault(node.name, []).append(extra)
    ordered = []
    for node in graph.node:
        for kept in (node, *after.get(node.name, [])):
            copy = NodeProto()
            copy.CopyFrom(kept)
            ordered.append(copy)
    del graph.node[:]
    graph.node.extend(ordered)
