"""ONNX graph surgery that export and the runtime both need.

``norm_stats``: the statistics, shared-statistics and shared-means variants of a decoder's FP32
graph (written by ``cmrt export --tile-stats``); ``segmenting``: the shared-statistics graph cut at
its norms, which the runtime runs layer by layer (``norm="canvas"``). Both import ONNX: import this
package only where a graph is made or cut, not at ``import cmrt``.
"""

from .norm_stats import (MEANS_GRAPH, SHARED_GRAPH, STATS_GRAPH, STATS_NAME, VARIANCES, Norm, NormGraphs, find_norms,
                         shared_statistics_graph, statistics_graph, write_norm_graphs)
from .segmenting import OWNED_ENDS, OWNED_M2, OWNED_MEAN, OWNED_STARTS, Segment, segments

__all__ = ["STATS_NAME", "STATS_GRAPH", "SHARED_GRAPH", "MEANS_GRAPH", "VARIANCES", "Norm", "NormGraphs", "find_norms",
           "statistics_graph", "shared_statistics_graph", "write_norm_graphs", "Segment", "segments", "OWNED_STARTS",
           "OWNED_ENDS", "OWNED_MEAN", "OWNED_M2"]
