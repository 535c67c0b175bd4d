"""How a network's output moves when its input moves: f(x + d) - f(x) for one input x and
many small changes d (occlusion's windows), carried layer by layer as differences.

The network is traced once (torch.fx). x's own pass is kept in float32; each change is
then pushed through as a difference: linear layers (convolutions, fully connected layers,
additions, pooling by averages, reshapes) take the difference alone, and every other
operation g gives g(x's value + difference) - g(x's value). Convolutions may run in
bfloat16: their rounding is then relative to the difference, not to the activations it
is a small change of, which is what makes bfloat16 usable for score differences
(computing f(x + d) and f(x) each in bfloat16 loses most of the digits of a small drop).
"""

from __future__ import annotations

import operator
import weakref

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

_SAME_OP_MODULES = (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Dropout)
_SAME_OP_FUNCTIONS = {torch.flatten}
_SAME_OP_METHODS = {"view", "reshape", "flatten", "contiguous"}
_SUMS = {operator.add, operator.sub, torch.add, torch.sub}
_RELUS = {F.relu, torch.relu}
_SIZE_READS = {"size", "dim"}  # x's batch of one would stand for the differences' batch

_traced: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def traced(network: nn.Module) -> torch.fx.GraphModule | None:
    """``network`` traced by torch.fx (once per network), or None where it cannot be, or
    where its graph reads a tensor's size."""
    if network not in _traced:
        try:
            graph_module = torch.fx.symbolic_trace(network)
        except Exception:  # dynamic control flow
            graph_module = None
        if graph_module is not None and any(
            (n.op == "call_method" and n.target in _SIZE_READS)
            or (n.op == "call_function" and n.target is getattr)
            for n in graph_module.graph.nodes
        ):
            graph_module = None
        _traced[network] = graph_module
    return _traced[network]


class OutputDifferences:
    """f(x + d) - f(x) of one network for one input ``x`` (batch of one) and batches of
    changes ``d``, with convolutions in ``dtype``. Build with :meth:`around`."""

    def __init__(self, graph_module: torch.fx.GraphModule, x: Tensor, dtype: torch.dtype):
        self.graph_module = graph_module
        self.modules = dict(graph_module.named_modules())
        self.dtype = dtype
        self.weights = {
            name: module.weight.detach().to(dtype)
            for name, module in self.modules.items()
            if isinstance(module, nn.Conv2d)
        }
        self.values = self._values(x)
        self.relu_parts: dict[torch.fx.Node, tuple[Tensor, Tensor]] = {}

    @classmethod
    def around(
        cls, network: nn.Module, x: Tensor, dtype: torch.dtype = torch.float32
    ) -> OutputDifferences | None:
        """The differences of ``network`` (in evaluation mode) around ``x``, or None where
        it cannot be traced."""
        graph_module = traced(network)
        return None if graph_module is None else cls(graph_module, x, dtype)

    def __call__(self, d: Tensor) -> Tensor:
        """f(x + d) - f(x) in float32 for a batch ``d`` of changes of x's shape."""
        differences: dict[torch.fx.Node, Tensor | None] = {}
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                differences[node] = d
            elif node.op == "output":
                return differences[node.args[0]].float()
            elif all(differences[n] is None for n in node.all_input_nodes):
                differences[node] = None  # a constant
            else:
                differences[node] = self._difference(node, differences)
        raise ValueError("the traced network has no output")

    def _values(self, x: Tensor) -> dict[torch.fx.Node, object]:
        """Every node's value for x; arguments are copied so in-place layers (a ResNet's
        ReLUs) leave the values before them as they were."""
        values: dict[torch.fx.Node, object] = {}
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                values[node] = x
            elif node.op == "output":
                break
            else:
                args, kwargs = torch.fx.node.map_arg(
                    (node.args, node.kwargs),
                    lambda n: values[n].clone() if isinstance(values[n], Tensor) else values[n],
                )
                values[node] = self._run(node, args, kwargs)
        return values

    def _run(self, node: torch.fx.Node, args, kwargs):
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return self.graph_module.get_parameter(node.target)
        raise ValueError(f"cannot run a {node.op} node")

    def _difference(self, node: torch.fx.Node, differences) -> Tensor:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        source = differences.get(node.args[0]) if node.args else None
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(source.to(self.dtype), self.weights[node.target], None)
        if isinstance(module, nn.Linear):
            return F.linear(source.float(), module.weight)
        if isinstance(module, nn.ReLU) or (node.op == "call_function" and node.target in _RELUS):
            return self._relu(node, source)
        if node.op == "call_function" and node.target in _SUMS and not node.kwargs:
            return self._sum(node, differences)
        if (
            isinstance(module, _SAME_OP_MODULES)
            or (node.op == "call_function" and node.target in _SAME_OP_FUNCTIONS)
            or (node.op == "call_method" and node.target in _SAME_OP_METHODS)
        ):
            args = (source, *node.args[1:])
            return self._run(node, args, node.kwargs)
        return self._through(node, differences)

    def _relu(self, node: torch.fx.Node, d: Tensor) -> Tensor:
        """relu(a + d) - relu(a) = max(d, -a) + min(a, 0): two passes, both in the
        convolutions' precision, whose rounding stays within the difference's scale."""
        if node not in self.relu_parts:
            a = self.values[node.args[0]]
            self.relu_parts[node] = ((-a).to(self.dtype), a.clamp(max=0).to(self.dtype))
        negative, below_zero = self.relu_parts[node]
        return torch.maximum(d.to(self.dtype), negative).add_(below_zero)

    def _sum(self, node: torch.fx.Node, differences) -> Tensor:
        a, b = (differences.get(n) if isinstance(n, torch.fx.Node) else None for n in node.args)
        subtract = node.target in (operator.sub, torch.sub)
        if b is None:
            return a
        if a is None:
            return -b if subtract else b
        return a - b if subtract else a + b

    def _through(self, node: torch.fx.Node, differences) -> Tensor:
        """Any other operation: g(a + d) - g(a), in float32."""

        def moved(n: torch.fx.Node):
            d = differences.get(n)
            return self.values[n] if d is None else self.values[n] + d.float()

        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), moved)
        return self._run(node, args, kwargs) - self.values[node]
