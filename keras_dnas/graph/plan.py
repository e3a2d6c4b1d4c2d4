"""ChannelPlan: plain data describing channel groups and layer geometry.

Single source of truth for prepare, costs, freeze and reports. It holds no
Keras objects and round-trips through JSON.
"""

import dataclasses
import json
import math


@dataclasses.dataclass
class Group:
    """A set of tensors whose channels are pruned together.

    Attributes:
        id: group id (index in ``ChannelPlan.groups``).
        size: number of channels.
        frozen: ``True`` when the channels cannot be searched.
        reason: why the group is frozen.
        defined_by: names of the Conv/Dense layers whose outputs are in the group.
        leader: the layer whose mask variable the group uses (first of ``defined_by``).
    """

    id: int
    size: int
    frozen: bool = False
    reason: str = None
    defined_by: list = dataclasses.field(default_factory=list)
    leader: str = None


@dataclasses.dataclass
class View:
    """Channel layout of a tensor: concatenated groups, tiled ``repeat`` times."""

    segments: list
    repeat: int = 1


@dataclasses.dataclass
class LayerInfo:
    """One layer call in execution order (see ``PLAN_FORMAT``).

    ``taps`` is set only on a Conv1D / DepthwiseConv1D whose kernel taps are
    searched (``kd.prepare(search=(..., "receptive_field", "dilation"))``):
    ``{"kernel_size": K, "dilation_rate": d, "axes": [...]}``. Its effective
    number of taps is an extra count after the group counts
    (:meth:`ChannelPlan.tap_slot`).
    """

    name: str
    class_name: str
    role: str
    op: str
    inputs: list
    output: View
    geometry: dict
    reason: str = None
    taps: dict = None


def _positions(shape):
    """Output positions of a per-sample shape: the product of its dimensions but the last."""
    return math.prod(max(int(d), 1) for d in shape[:-1] if d is not None) if shape else 1


def layer_geometry(input_shapes, output_shape, *, kernel_size=(), strides=(), dilation_rate=(),
                   padding="", use_bias=False, depth_multiplier=1, activation=None,
                   channel_params=0, in_positions=None, out_positions=None, groups=1,
                   fixed_params=0):
    """The geometry record of one layer (``LayerInfo.geometry``): plain data the costs read.

    The one builder of this dict: the graph reader (`graph.roles`), the `.tflite` reader
    (`export.estimate`) and, in `benchmarks/_bench`, the MLPerf Tiny reference layers and the
    calibration CSV all call it.
    Shapes are per sample (no batch axis; ``None`` for an unknown dimension); positions (the
    product of the dimensions but the channels) are derived from them unless given.

    Example:

    >>> g = layer_geometry([[32, 32, 3]], [16, 16, 8], kernel_size=(3, 3), strides=(2, 2))
    >>> g["taps"], g["in_positions"], g["out_positions"], g["in_channels"], g["out_channels"]
    (9, 1024, 256, 3, 8)
    """
    in0 = list(input_shapes[0]) if input_shapes else []
    output_shape = list(output_shape)
    # parameters of a layer without a channel rule (an Embedding's table): counted, not searched
    fixed = {"fixed_params": int(fixed_params)} if fixed_params else {}
    return {**fixed,
        "channel_params": int(channel_params),
        "kernel_size": [int(k) for k in kernel_size],
        "taps": int(math.prod(kernel_size)) if len(kernel_size) else 1,
        "strides": [int(s) for s in strides],
        "dilation_rate": [int(d) for d in dilation_rate],
        "padding": str(padding),
        "use_bias": bool(use_bias),
        "depth_multiplier": int(depth_multiplier or 1),
        "groups": int(groups or 1),
        "activation": activation,
        "input_shapes": [list(s) for s in input_shapes],
        "output_shape": output_shape,
        "in_positions": int(in_positions) if in_positions is not None else _positions(in0),
        "out_positions": (int(out_positions) if out_positions is not None
                          else _positions(output_shape)),
        "in_channels": in0[-1] if in0 else None,
        "out_channels": output_shape[-1] if output_shape else None,
    }


@dataclasses.dataclass
class ChannelPlan:
    """Result of :func:`keras_dnas.graph.analyze`.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((8, 8, 3))
    >>> y = keras.layers.Conv2D(8, 3)(x)
    >>> y = keras.layers.Dense(2)(keras.layers.Flatten()(y))
    >>> plan = kd.graph.analyze(keras.Model(x, y))
    >>> [g.size for g in plan.searchable_groups()]
    [8]
    >>> kd.graph.ChannelPlan.from_json(plan.to_json()) == plan
    True
    """

    model_name: str
    groups: list
    layers: list
    inputs: list
    outputs: list
    #: choice blocks (``kd.layers.Choice``), each ``{"name": merge layer, "alternatives":
    #: [[layer names of alternative 0], ...]}`` (an identity alternative may list no layer)
    choices: list = dataclasses.field(default_factory=list)

    def searchable_groups(self):
        """Groups whose channels the search may prune."""
        return [g for g in self.groups if not g.frozen]

    def layer(self, name):
        """The first call of layer ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise ValueError(f"No layer named '{name}' in plan of model '{self.model_name}'.")

    def choice_of(self):
        """``{layer name: (block index, alternative index)}`` of the layers inside choice blocks."""
        found = {}
        for b, block in enumerate(self.choices):
            for j, names in enumerate(block["alternatives"]):
                for name in names:
                    found[name] = (b, j)
        return found

    def tap_layers(self):
        """Names of the layers whose taps are searched, in order (first calls)."""
        names = []
        for info in self.layers:
            if info.taps and info.name not in names:
                names.append(info.name)
        return names

    def tap_slot(self, name):
        """Index of layer ``name``'s effective tap count in a counts list: after the
        group counts, one per :meth:`tap_layers` entry."""
        return len(self.groups) + self.tap_layers().index(name)

    def choice_slot(self, block):
        """Index of choice block ``block``'s weights in a counts list: after the group
        counts and the tap counts."""
        return len(self.groups) + len(self.tap_layers()) + block

    def full_taps(self):
        """Full tap counts of :meth:`tap_layers` (what a counts list without them means)."""
        return [self.layer(n).taps["kernel_size"] for n in self.tap_layers()]

    def view_size(self, view):
        """Full channel count of a view."""
        return view.repeat * sum(self.groups[g].size for g in view.segments)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d):
        def view(v):
            return View(list(v["segments"]), int(v["repeat"]))

        return cls(
            model_name=d["model_name"],
            groups=[Group(**g) for g in d["groups"]],
            layers=[
                LayerInfo(
                    name=li["name"], class_name=li["class_name"], role=li["role"], op=li["op"],
                    inputs=[view(v) for v in li["inputs"]], output=view(li["output"]),
                    geometry=dict(li["geometry"]), reason=li.get("reason"),
                    taps=dict(li["taps"]) if li.get("taps") else None,
                )
                for li in d["layers"]
            ],
            inputs=[view(v) for v in d["inputs"]],
            outputs=[view(v) for v in d["outputs"]],
            choices=[{"name": c["name"], "alternatives": [list(a) for a in c["alternatives"]]}
                     for c in d.get("choices", [])],
        )

    @classmethod
    def from_json(cls, s):
        return cls.from_dict(json.loads(s))

    def describe(self):
        """A short human-readable listing of the groups."""
        lines = [f"ChannelPlan of '{self.model_name}': {len(self.groups)} groups, "
                 f"{len(self.searchable_groups())} searchable"]
        for g in self.groups:
            state = f"frozen ({g.reason})" if g.frozen else "searchable"
            lines.append(f"  group {g.id}: {g.size} ch, {state}, defined by {g.defined_by}")
        return "\n".join(lines)
