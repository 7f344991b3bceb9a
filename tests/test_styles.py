"""Each arch's look in the report (bench.report.styles), from its registry entry."""

import pandas as pd
import seaborn as sns

import resnet
from bench.report.styles import arch_colors, arch_lines, arch_title, drawn_archs, line_key, line_words


def test_the_built_in_archs_keep_their_looks():
    palette = sns.color_palette("colorblind")
    colours = arch_colors()
    assert [colours[a] for a in resnet.ALL_ARCHS] == [palette[i] for i in (3, 0, 2, 9, 4)]
    assert line_words() == {"plain": "dashed", "residual": "solid", "preact": "dotted", "zero-init": "dash-dot",
                            "dirac": "long dash-dot"}
    lines = arch_lines()
    assert lines["plain"] == {"ls": "--", "marker": "s"} and lines["residual"] == {"ls": "-", "marker": "o"}
    assert arch_title("zero-init") == "residual, branches start at zero"


def test_a_registered_arch_gets_its_own_look_and_an_unregistered_one_still_draws(throwaway_arch):
    colours, lines = arch_colors(["gated"]), arch_lines(["gated"])
    assert len({colours[a] for a in (*resnet.arch_names(), "gated")}) == 7  # every arch its own colour
    assert len({str(lines[a]) for a in (*resnet.arch_names(), "gated")}) == 7
    assert arch_title(throwaway_arch.name) == throwaway_arch.title and arch_title("gated") == "gated"


def test_the_paper_archs_are_always_drawn_and_another_where_it_has_runs(throwaway_arch):
    runs = pd.DataFrame({"arch": ["plain", "dirac-residual", "gated"]})
    assert drawn_archs(runs) == ["plain", "residual", "dirac-residual", "gated"]
    assert line_key(runs) == ("Dashed: plain; solid: residual; densely dotted: dirac-residual; "
                              "densely dashed: gated.")
