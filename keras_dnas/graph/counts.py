"""Channel counts of a searchable model's masks, one per ChannelPlan group (then tap counts).

The bridge from Keras layers to the cost functions, which see these counts only: Keras tensors
(straight-through soft counts, differentiable) during the search, Python ints to certify.
"""

from keras import ops

from keras_dnas import masks
from keras_dnas.graph import walk


def group_owners(model, plan):
    """Layer holding each searchable group's mask (``None`` for frozen groups)."""
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    return [None if g.frozen else by_name[g.leader] for g in plan.groups]


def choice_layers(model, plan):
    """The ``kd.layers.Choice`` merge layer of each choice block of ``plan``."""
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    return [by_name[block["name"]] for block in plan.choices]


def soft_counts(model, plan):
    """Differentiable channel counts (forward value = the hard count), then the effective
    tap count of each :meth:`~ChannelPlan.tap_layers` entry, then the probabilities of each
    choice block's alternatives (``softmax(logits / T)``)."""
    counts = [g.size if owner is None else ops.sum(masks.owner_gate(owner))
              for g, owner in zip(plan.groups, group_owners(model, plan))]
    counts += [layer.dnas_tap_count() for layer in tap_owners(model, plan)]
    return counts + [c.probabilities() for c in choice_layers(model, plan)]


def hard_counts(model, plan):
    """Integer channel counts of the current masks, then tap counts, then the one-hot of
    each choice block's argmax alternative."""
    counts = [g.size if owner is None else int(masks.hard_gate(owner.dnas_alpha).sum())
              for g, owner in zip(plan.groups, group_owners(model, plan))]
    counts += [layer.dnas_tap_count(exact=True) for layer in tap_owners(model, plan)]
    return counts + [[1 if j == c.chosen() else 0 for j in range(len(block["alternatives"]))]
                     for c, block in zip(choice_layers(model, plan), plan.choices)]


def tap_owners(model, plan):
    """The layers of ``plan.tap_layers()`` (they hold ``dnas_beta`` / ``dnas_gamma``;
    their effective tap counts follow the group counts, see ``ChannelPlan.tap_slot``)."""
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    return [by_name[n] for n in plan.tap_layers()]
