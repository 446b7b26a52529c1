"""Plans: which tensors of a model are constrained to which set, resolved against the model.

* :mod:`prunus.plan.recipe`: :class:`~prunus.plan.recipe.Plan` from a YAML recipe or ``Plan.uniform``;
* :mod:`prunus.plan.quant`: :class:`~prunus.plan.quant.QuantPlan`, the same for quantization levels;
* :mod:`prunus.plan.coupling`: filter targets coupled through residual adds and BatchNorms (channel sets);
* :mod:`prunus.plan.layout`: :class:`~prunus.plan.layout.Layout`, a plan resolved against one model once, and
  the projection every method's Z-step uses;
* :mod:`prunus.plan.projection`: the hard-prune (the projection written into the weights, masks returned);
* :mod:`prunus.plan.search`: the smallest ratio that reaches a target (MACs, live weights).
"""
