"""rscir-kit: remote sensing composed image retrieval (WeiCom / PatternCom) and its neighbours.

Thin, tested building blocks; the numbered notebooks in ``notebooks/`` call them.
"""

__version__ = "0.1.0"
