"""Why CQD works (paper Section 5) and the result figures.

* `gradients`: d log p(true label) / d image through the training
  preprocessing, and its per-pixel L2 norm over r, g, b (the gradient maps).
* `tau`: the fraction of the gradient norm inside the object's box, the box
  mapping into the network's input, and the B-vs-CQD study behind Figure 4.
* `figures`: Figure 4 (gradient panel, tau scatter), Table 1/2 bars,
  training curves; Agg canvas, atomic PNG writes.
* `report`: the figures of a `reproduce`/`demo` results folder, from
  results.json and history.json only.
"""
