"""``prunus report``: a compressed model's accuracy, true size, latency and privacy leakage in one place.

* :mod:`prunus.report.collect`: what a run directory holds (its final model, curves, method history, audit);
* :mod:`prunus.report.measure`: what is measured on each model, each with the library's own tool;
* :mod:`prunus.report.build`: every run measured and compared with the dense one (:class:`Report`, JSON);
* :mod:`prunus.report.plots`: the figures (matplotlib, the ``report`` extra) as PNG data URIs;
* :mod:`prunus.report.html`: the self-contained page; :mod:`prunus.report.terminal`: the rich tables.
"""

from prunus.report.build import SECTIONS, Report, ReportOptions, build_report
from prunus.report.html import render_html

__all__ = ["SECTIONS", "Report", "ReportOptions", "build_report", "render_html"]
