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

from pathlib import Path

def default_output(source: str | Path, name: str) -> Path:
    """Where an analysis writes without `--out`: `<source>/<name>`, or beside `source` when it is a file.

    The one rule of `report` (`RESULTS_DIR/figures`) and `analyze gradients`
    (`<CQD run folder>/analysis-gradients`): outputs go with the results
    they are made from, never into the current folder.
    """
    source = Path(source)
    return (source if source.is_dir() else source.parent) / name
