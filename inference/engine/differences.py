"""How a network's output moves when its input moves: f(x + d) - f(x) for one input x and
many small changes d (occlusion's windows), carried layer by layer as differences.

The network is traced once (torch.fx). x's own pass is kept in float32; each change is
then pushed through as a difference: linear layers (convolutions, fully connected layers,
sums, pooling by averages, reshapes) take the difference alone, and every other
operation g gives g(x's value + difference) - g(x's value). Convolutions may run in
bfloat16: their rounding is then relative to the difference, not to the activations it
is a small change of, which is what makes bfloat16 usable for score differences
(computing f(x + d) and f(x) each in bfloat16 loses most of the digits of a small drop).

A network this cannot carry faithfully is refused (:meth:`OutputDifferences.around` gives
None) and the caller runs whole passes instead.
"""

from __future__ import annotations

import operator
import weakref

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

_LINEAR_MODULES = (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Dropout)
_LINEAR_FUNCTIONS = {torch.flatten}
_LINEAR_METHODS = {"view", "reshape", "flatten", "contiguous"}
_SUMS = {operator.add, operator.sub, torch.add, torch.sub}
_RELUS = {F.relu, torch.relu}
# x's batch of one is not the changes': a graph that reads sizes is refused early (its
# steps would also fail the floating-point-tensor check)
_SIZE_READS = {"size", "dim", "numel", "stride"}
# steps whose output may be their input itself or a view of it
_VIEW_MODULES = (nn.Identity, nn.Dropout, nn.Flatten)
_VIEW_METHODS = {"view", "view_as", "reshape", "flatten", "contiguous", "expand", "expand_as"}
_VIEW_METHODS |= {"squeeze", "unsqueeze", "transpose", "permute", "narrow", "t"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem}
_VIEW_FUNCTIONS |= {torch.transpose, torch.permute, torch.narrow}
_PROBE_SCALE = 0.1  # of x's largest magnitude
_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.05}  # of the probe's difference

_traced: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Unsupported(Exception):
    """The network cannot be carried as differences; run whole passes."""


def traced(network: nn.Module) -> torch.fx.GraphModule | None:
    """``network`` traced by torch.fx, once per network object and again when one of the
    layers it calls was replaced, or None where it cannot be traced."""
    graph_module = _traced.get(network)
    if network not in _traced or (graph_module is not None and _replaced(graph_module, network)):
        try:
            graph_module = torch.fx.symbolic_trace(network)
        except Exception:  # dynamic control flow
            graph_module = None
        _traced[network] = graph_module
    return graph_module


def _replaced(graph_module: torch.fx.GraphModule, network: nn.Module) -> bool:
    """Whether a layer the trace calls is no longer the network's."""
    calls = graph_module.graph.find_nodes(op="call_module")
    try:
        return any(
            graph_module.get_submodule(n.target) is not network.get_submodule(n.target)
            for n in calls
        )
    except AttributeError:  # a layer removed
        return True


class _Recorder(torch.fx.Interpreter):
    """Runs a traced graph keeping every node's value. Arguments are copied first, so
    in-place layers (a ResNet's ReLUs) leave the values before them as they were."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__(graph_module, garbage_collect_values=False)

    def fetch_args_kwargs_from_env(self, n: torch.fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        copy = lambda v: v.clone() if isinstance(v, Tensor) else v  # noqa: E731
        return torch.fx.node.map_aggregate((args, kwargs), copy)

    def run_with(self, node: torch.fx.Node, args, kwargs):
        """Run one node on the given argument values."""
        return getattr(self, node.op)(node.target, args, kwargs)


class OutputDifferences:
    """f(x + d) - f(x) of one network for one input ``x`` (batch of one) and batches of
    changes ``d``, with convolutions in ``dtype``. Build with :meth:`around`."""

    def __init__(self, graph_module: torch.fx.GraphModule, x: Tensor, dtype: torch.dtype):
        self.graph = graph_module.graph
        self.recorder = _Recorder(graph_module)
        self.modules = dict(graph_module.named_modules())
        self.dtype = dtype
        self.weights = {
            name: module.weight.detach().to(dtype)
            for name, module in self.modules.items()
            if type(module) is nn.Conv2d
        }
        self.recorder.run(x)
        self.values = self.recorder.env
        self.relu_parts: dict[torch.fx.Node, tuple[Tensor, Tensor]] = {}
        self.released_after = _last_uses(self.graph)

    @classmethod
    def around(
        cls, network: nn.Module, x: Tensor, dtype: torch.dtype = torch.float32
    ) -> OutputDifferences | None:
        """The differences of ``network`` (in evaluation mode) around ``x``, or None where
        they could differ from whole passes: a network that cannot be traced, is in
        training mode or has hooks, whose graph reads sizes, takes more than x or gives
        anything but one floating-point tensor at any step, whose traced pass is not its
        own, that changes in place a value it reads again, or whose carried difference
        for a probe change is not that of two whole passes."""
        graph_module = traced(network)
        if graph_module is None or network.training or _has_hooks(network):
            return None
        try:
            with torch.no_grad():
                _check_graph(graph_module.graph)
                differences = cls(graph_module, x, dtype)
                differences.check(network, x)
        except Exception:  # Unsupported, or a step this cannot run: whole passes will
            return None
        return differences

    def __call__(self, d: Tensor) -> Tensor:
        """f(x + d) - f(x) in float32 for a batch ``d`` of changes of x's shape."""
        differences: dict[torch.fx.Node, Tensor | None] = {}
        *steps, output = self.graph.nodes
        for node in steps:
            if node.op == "placeholder":
                differences[node] = d
            elif all(differences[n] is None for n in node.all_input_nodes):
                differences[node] = None  # a constant
            else:
                differences[node] = self._difference(node, differences)
            for done in self.released_after.get(node, ()):
                del differences[done]
        return differences[output.args[0]].float()

    def check(self, network: nn.Module, x: Tensor) -> None:
        """Raise :class:`Unsupported` unless x's traced pass is the network's own and a
        probe change's carried difference is that of two whole passes (``_TOLERANCE``)."""
        values = self.values.values()
        if not all(isinstance(v, Tensor) and v.is_floating_point() for v in values):
            raise Unsupported("a step gives something other than one floating-point tensor")
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        probe = noise.to(x) * (_PROBE_SCALE * (float(x.abs().max()) or 1.0))
        own = network(x)
        expected = network(x + probe) - own
        carried = self(probe)
        output = self.values[self.graph.find_nodes(op="output")[0]]
        if output.shape != own.shape or not torch.allclose(output, own, rtol=1e-5, atol=1e-6):
            raise Unsupported("the traced pass is not the network's own")
        error = float((carried - expected).abs().max())
        if not error <= _TOLERANCE[self.dtype] * float(expected.abs().max()) + 1e-6:
            raise Unsupported("a probe change's carried difference is not two passes'")

    def _difference(self, node: torch.fx.Node, differences) -> Tensor:
        """One node's difference from its inputs' differences (at least one not None)."""
        kind = type(self.modules.get(node.target)) if node.op == "call_module" else None
        source = differences.get(node.args[0]) if node.args else None
        alone = source is not None and len(node.all_input_nodes) == 1
        if kind is nn.Conv2d and alone:  # _conv_forward: the module's own padding mode
            module = self.modules[node.target]
            return module._conv_forward(source.to(self.dtype), self.weights[node.target], None)
        if kind is nn.Linear and alone:
            return F.linear(source.float(), self.modules[node.target].weight)
        if (kind is nn.ReLU or node.target in _RELUS) and alone:
            return self._relu(node, source)
        if node.op == "call_function" and node.target in _SUMS and not node.kwargs:
            return self._sum(node, differences)
        if alone and (
            kind in _LINEAR_MODULES
            or (node.op == "call_function" and node.target in _LINEAR_FUNCTIONS)
            or (node.op == "call_method" and node.target in _LINEAR_METHODS)
        ):
            return self.recorder.run_with(node, (source, *node.args[1:]), node.kwargs)
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
        """a ± b carried as the sum of the operands' differences (a constant's is zero);
        where a constant operand broadcasts the result to a larger shape than the
        difference's, as any other operation."""
        a, b = (differences.get(n) if isinstance(n, torch.fx.Node) else None for n in node.args)
        subtract = node.target in (operator.sub, torch.sub)
        if a is not None and b is not None:
            return a - b if subtract else a + b
        alone = a if b is None else (-b if subtract else b)
        if alone.shape[1:] != self.values[node].shape[1:]:
            return self._through(node, differences)
        return alone

    def _through(self, node: torch.fx.Node, differences) -> Tensor:
        """Any other operation: g(a + d) - g(a), in float32."""

        def moved(n: torch.fx.Node):
            d, value = differences.get(n), self.values[n]
            return value.clone() if d is None else value + d.float()

        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), moved)
        return self.recorder.run_with(node, args, kwargs) - self.values[node]


def _check_graph(graph: torch.fx.Graph) -> None:
    """Raise :class:`Unsupported` for a graph that takes more than one input, reads a
    tensor's size, returns more than one value, or changes in place a value that a later
    step reads (the recorded values are each step's own, taken before any change)."""
    placeholders = graph.find_nodes(op="placeholder")
    (output,) = graph.find_nodes(op="output")
    if len(placeholders) != 1 or not isinstance(output.args[0], torch.fx.Node):
        raise Unsupported("one input and one output only")
    if any(
        (n.op == "call_method" and n.target in _SIZE_READS)
        or (n.op == "call_function" and n.target is getattr)
        for n in graph.nodes
    ):
        raise Unsupported("the graph reads a tensor's size")
    order = {node: i for i, node in enumerate(graph.nodes)}
    storage = {node: _storage(node, graph) for node in graph.nodes}
    for node in graph.nodes:
        if not (_in_place(node, graph) and node.args and isinstance(node.args[0], torch.fx.Node)):
            continue
        earlier = [n for n in order if storage[n] is storage[node] and order[n] < order[node]]
        if any(order[user] > order[node] for n in earlier for user in n.users):
            raise Unsupported("a value changed in place is read again")


def _storage(node: torch.fx.Node, graph: torch.fx.Graph) -> torch.fx.Node:
    """The step whose tensor ``node``'s value is (the same, or a view of it): followed
    back through layers and functions that may return their input or a view of it."""
    while (
        node.args
        and isinstance(node.args[0], torch.fx.Node)
        and (_may_alias(node, graph) or _in_place(node, graph))
    ):
        node = node.args[0]
    return node


def _may_alias(node: torch.fx.Node, graph: torch.fx.Graph) -> bool:
    if node.op == "call_module":
        return type(graph.owning_module.get_submodule(node.target)) in _VIEW_MODULES
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and node.target in _VIEW_FUNCTIONS


def _in_place(node: torch.fx.Node, graph: torch.fx.Graph) -> bool:
    """Whether ``node`` may change its first argument in place: a layer or function with
    ``inplace=True``, or a tensor method whose name ends in an underscore."""
    if node.op == "call_module":
        return bool(getattr(graph.owning_module.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    return node.op == "call_function" and bool(node.kwargs.get("inplace", False))


def _has_hooks(network: nn.Module) -> bool:
    """Whether any layer has forward hooks (which the carried convolutions would skip)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in network.modules())


def _last_uses(graph: torch.fx.Graph) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """For each node, the nodes whose values are not needed after it."""
    released: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    seen: set[torch.fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.op == "output":
            seen.update(node.all_input_nodes)
            continue
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                released.setdefault(node, []).append(used)
    return released
