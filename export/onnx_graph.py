"""An ONNX graph indexed for pattern rewrites: who produces and who consumes each value."""

import onnx
from onnx import numpy_helper


class GraphIndex:
    """The producer and consumers of every value of `graph`, and its constant values (those
    in external data read from `base_dir`, the graph file's folder)."""

    def __init__(self, graph: onnx.GraphProto, base_dir: str = ""):
        self.graph, self.base_dir = graph, str(base_dir)
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.constants = {i.name: i for i in graph.initializer}

    def parent(self, node, index: int, op: str):
        """The node producing input `index` of `node`, if it is an `op`."""
        if index >= len(node.input):
            return None
        found = self.producer.get(node.input[index])
        return found if found is not None and found.op_type == op else None

    def only_child(self, node, op: str):
        """The single consumer of `node`'s first output, if it is an `op`."""
        children = self.consumers.get(node.output[0], [])
        return children[0] if len(children) == 1 and children[0].op_type == op else None

    def constant_value(self, name: str):
        """The value of an initializer, a Constant node or an Identity of one, else None."""
        if name in self.constants:
            return numpy_helper.to_array(self.constants[name], self.base_dir)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Identity":  # weights the exporter deduplicated
            return self.constant_value(node.input[0])
        return None


def drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes nothing reaches the outputs through (node order is not assumed sorted)."""
    producer = {out: n for n in graph.node for out in n.output}
    live, pending = set(), [o.name for o in graph.output]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in live:
            live.add(id(node))
            pending.extend(node.input)
    kept = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(kept)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads (a rewrite's replaced constants)."""
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
