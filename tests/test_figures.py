"""Report figures: every text and the legend lie inside the saved image (nothing clipped), and
each figure is laid out once."""
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pythia.evaluate import figures as F


def _bars() -> dict[str, pd.DataFrame]:
    classes = [f"M_{a}" for a in ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")]
    return {t: pd.DataFrame(np.linspace(0.1, 0.6, 6 * 7).reshape(6, 7), index=classes,
                            columns=[f"candidate/with-a-long-name#{i}" for i in range(7)])
            for t in ("gender", "age", "age_gender")}


def _saved(monkeypatch, draw) -> tuple[Figure, bytes]:
    """Call a plot_* function, keeping the figure it saved."""
    kept = []
    real = F.figure_png

    def keep(fig):
        kept.append(fig)
        return real(fig)
    monkeypatch.setattr(F, "figure_png", keep)
    png = draw()
    return kept[0], png


def _inside(fig: Figure, artist) -> bool:
    box, page = artist.get_window_extent(), fig.bbox
    return (box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1 and box.x1 <= page.x1 + 1
            and box.y1 <= page.y1 + 1)


@pytest.mark.parametrize("kind", ["bars", "reliability", "confusion"])
def test_figure_texts_and_legend_lie_inside_the_image(monkeypatch, kind):
    if kind == "bars":
        draw = lambda: F.plot_bar_panels(_bars(), "a long title " * 4, "F1")
    elif kind == "reliability":
        bins = pd.DataFrame({"count": [3, 0, 5], "confidence": [0.2, 0.5, 0.8],
                             "accuracy": [0.25, 0.5, 0.7]})
        draw = lambda: F.plot_reliability({"age": {"model vs provider": bins,
                                                   "bayes vs truth": bins}}, "title")
    else:
        names = ["F_18-24", "F_25-34", "M_18-24"]
        draw = lambda: F.plot_confusion({"age_gender": (np.arange(9).reshape(3, 3), names)},
                                        "title")
    fig, png = _saved(monkeypatch, draw)
    size = Image.open(io.BytesIO(png)).size
    # saved as laid out: the page is the figure's size, not a box grown around stray texts
    assert size == tuple(round(v * F._DPI) for v in fig.get_size_inches())
    texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label,
                                            *ax.get_xticklabels(), *ax.get_yticklabels())
             if t.get_text()]
    texts += [fig._suptitle] + list(fig.legends)
    outside = [getattr(t, "get_text", lambda: "legend")() for t in texts if not _inside(fig, t)]
    assert not outside, f"clipped: {outside}"
    if kind != "confusion":
        assert fig.legends, "the legend under the panels is missing"


def test_a_legend_below_the_page_counts_as_clipped():
    # the check above can fail: a legend anchored under the figure lies outside it
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1], label="x")
    legend = fig.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
    FigureCanvasAgg(fig).draw()
    assert not _inside(fig, legend)
