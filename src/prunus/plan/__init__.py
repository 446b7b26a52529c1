"""Plans: which tensors of a model are constrained to which set, resolved against the model.

* :mod:`prunus.plan.recipe`: :class:`~prunus.plan.recipe.Plan` from a YAML recipe or ``Plan.uniform``;
* :mod:`prunus.plan.quant`: :class:`~prunus.plan.quant.QuantPlan`, the same for quantization levels;
* :mod:`prunus.plan.coupling`: filter targets coupled through residual adds and BatchNorms (channel sets);
* :mod:`prunus.plan.projection`: a model's planned tensors projected onto their sets (the Z-step, hard-prune).
"""
