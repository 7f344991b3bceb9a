"""`bench report`, `bench analyze` and `bench models`: the paper's figures and tables from results folders.

`bench.report.make_report` is bench.report.report's, as it was before the package."""

from bench.report.report import make_report

__all__ = ["make_report"]
